import type { AuthMode } from './auth.js';
import type { ChatStream } from './sse.js';
import type { TollgateError } from './errors.js';

export interface Message { role: string; content: unknown; [k: string]: unknown }
export interface Usage { prompt_tokens: number; completion_tokens?: number; total_tokens: number; [k: string]: unknown }
export interface ChatRequest {
  model: string;
  messages: Message[];
  max_tokens?: number;
  temperature?: number;
  stream_options?: { include_usage?: boolean };
  user?: string;
  [k: string]: unknown;
}
export interface ChatCompletion {
  id: string; object: string; created: number; model: string;
  choices: { index: number; message: Message; finish_reason: string | null }[];
  usage?: Usage;
  [k: string]: unknown;
}
export interface ChatChunk {
  id: string; object: string; created: number; model: string;
  choices: { index: number; delta: { role?: string; content?: string }; finish_reason: string | null }[];
  usage?: Usage | null;
  [k: string]: unknown;
}
export interface EmbeddingsRequest { model: string; input: string | string[] | number[] | number[][]; [k: string]: unknown }
export interface Embeddings { object: string; data: { index: number; embedding: number[] | string }[]; model: string; usage?: Usage }
export interface ImageRequest { model: string; prompt: string; n?: number; size?: string; response_format?: string; [k: string]: unknown }
export interface ImagesResponse { created: number; data: { url?: string; b64_json?: string; revised_prompt?: string }[] }
export interface Operation {
  id: string; object: 'operation';
  status: 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';
  result?: ImagesResponse;
  error?: { message: string; type: string; code: string; param: string | null };
  [k: string]: unknown;
}
export interface ModelList { object: 'list'; data: { id: string; object: string; created?: number; owned_by?: string }[] }
export interface Me {
  tenant_id: string; user_id?: string | null; subscription_id?: string | null;
  credential: { type: 'api_key' | 'platform_jwt' | 'external_jwt' | 'app_jwt' | 'subscription_id'; id?: string | null };
  permissions: string[];
}
export interface RetryPolicy { maxRetries?: number; maxWaitMs?: number; maxTotalWaitMs?: number }
export interface RetryEvent { attempt: number; waitMs: number; error: TollgateError }
export interface CallOptions {
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /** Overrides what getJwt receives as `params`. */
  jwtParams?: unknown;
}
export interface WaitOptions extends CallOptions { intervalMs?: number; maxIntervalMs?: number; timeoutMs?: number }

export declare function retryWait(policy: Required<RetryPolicy>, err: TollgateError, retries: number, waitedMs: number): number | null;

export declare class TollgateClient {
  constructor(options: {
    baseUrl: string;
    auth: AuthMode;
    fetch?: typeof fetch;
    headers?: Record<string, string>;
    retry?: RetryPolicy;
    onRetry?: (e: RetryEvent) => void;
    /** Seconds since the epoch. */
    clock?: () => number;
  });
  readonly baseUrl: string;
  models(opts?: CallOptions): Promise<ModelList>;
  me(opts?: CallOptions): Promise<Me>;
  chat(req: ChatRequest, opts?: CallOptions): Promise<ChatCompletion>;
  chatStream(req: ChatRequest, opts?: CallOptions): Promise<ChatStream>;
  embeddings(req: EmbeddingsRequest, opts?: CallOptions): Promise<Embeddings>;
  images(req: ImageRequest, opts?: CallOptions): Promise<ImagesResponse>;
  imagesAsync(req: ImageRequest, opts?: CallOptions): Promise<Operation>;
  operation(id: string, opts?: CallOptions): Promise<Operation>;
  waitOperation(op: Operation, opts?: WaitOptions): Promise<ImagesResponse>;
  imagesAndWait(req: ImageRequest, opts?: WaitOptions): Promise<ImagesResponse>;
}
