/** The exact JSON text of a value as the client sends it (`new RawJson('1.0')`). */
export declare class RawJson {
  constructor(text: string);
  readonly text: string;
}
/** A number literal as written in JSON text (from parseExact). */
export declare class ExactNumber {
  constructor(text: string);
  readonly text: string;
  toJSON(): number;
}
/** Any value canonicalJson / bindSha256Digest accept. */
export type JsonInput =
  | null | boolean | number | bigint | string | RawJson | ExactNumber
  | JsonInput[] | { [key: string]: JsonInput | undefined };
/** The compact JSON the gateway hashes for a non-string value. */
export declare function canonicalJson(value: JsonInput): string;
/** Lowercase hex SHA-256 the gateway expects for `bind_sha256` (string: UTF-8 bytes). */
export declare function bindSha256Digest(value: JsonInput): Promise<string>;
export declare function bindSha256Input(value: JsonInput): Uint8Array;
/** JSON.parse keeping number literals (1.0 vs 1, digits beyond 2^53) as ExactNumber. */
export declare function parseExact(text: string): any;
/** `{pointer: value}` for each JSON Pointer present in the body (object or JSON text). */
export declare function select(body: unknown, pointers: string[]): Record<string, any>;
export declare function compareCodePoints(a: string, b: string): number;
