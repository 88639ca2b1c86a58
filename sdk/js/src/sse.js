// Server-sent events over a fetch body (a ReadableStream), and the typed chat stream.

import { TollgateClientError, TollgateError } from './errors.js';

/** Splits a stream of bytes into SSE events `{event, data}`. */
export async function* sseEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      for (;;) {
        const m = /\r\n\r\n|\n\n|\r\r/.exec(buf);
        if (!m) break;
        const raw = buf.slice(0, m.index);
        buf = buf.slice(m.index + m[0].length);
        let event = '';
        const data = [];
        for (const line of raw.split(/\r\n|\n|\r/)) {
          if (line === '' || line.startsWith(':')) continue;
          const k = line.indexOf(':');
          const field = k < 0 ? line : line.slice(0, k);
          let v = k < 0 ? '' : line.slice(k + 1);
          if (v.startsWith(' ')) v = v.slice(1);
          if (field === 'event') event = v;
          else if (field === 'data') data.push(v);
        }
        if (data.length || event) yield { event, data: data.join('\n') };
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/**
 * A streamed chat answer: `for await (const chunk of stream)` yields typed chunks (the last one
 * carries `usage` when `stream_options.include_usage` asked for it) and ends after `[DONE]`; a
 * stream the gateway cuts (e.g. AUTH_REVOKED) throws that TollgateError. `cancel()` (or leaving
 * the loop) closes the connection.
 */
export class ChatStream {
  constructor(response) {
    this.response = response;
    this.requestId = response.headers.get('x-request-id');
    this._events = sseEvents(response.body);
  }

  async *[Symbol.asyncIterator]() {
    for await (const ev of this._events) {
      if (ev.event === 'error') {
        let body = null;
        try {
          body = JSON.parse(ev.data);
        } catch {
          body = ev.data;
        }
        const e = TollgateError.fromBody(0, body, null);
        e.status = TollgateError.statusOf(e.code) || e.status;
        e.inStream = true;
        e.requestId = this.requestId;
        throw e;
      }
      const data = ev.data.trim();
      if (data === '[DONE]') return;
      if (data === '') continue;
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch (cause) {
        throw new TollgateClientError('decode', 'a stream event is not a chat chunk', { cause, requestId: this.requestId });
      }
      if (chunk && chunk.error) {
        const e = TollgateError.fromBody(0, chunk, null);
        e.inStream = true;
        e.requestId = this.requestId;
        throw e;
      }
      yield chunk;
    }
  }

  /** Closes the connection. */
  async cancel() {
    await this._events.return?.();
    try {
      await this.response.body?.cancel();
    } catch {
      // Already being read (and so cancelled by the line above).
    }
  }
}
