import type { ChatChunk } from './client.js';
export declare function sseEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<{ event: string; data: string }>;
export declare class ChatStream implements AsyncIterable<ChatChunk> {
  readonly response: Response;
  readonly requestId: string | null;
  [Symbol.asyncIterator](): AsyncIterator<ChatChunk>;
  cancel(): Promise<void>;
}
