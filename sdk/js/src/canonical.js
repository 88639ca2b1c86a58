// The hashing of `bind_sha256`, byte for byte as the Tollgate gateway does it.
//
// The gateway parses the request body, takes the value at the pointer and hashes
// - a string: its UTF-8 bytes (escapes resolved, no quotes);
// - anything else: its compact JSON as the gateway re-serialises the *parsed* value: no
//   whitespace; object keys sorted by UTF-8 bytes (= code points, not UTF-16 units; duplicates:
//   the last wins); strings escaped only for `"`, `\` and characters below U+0020 (\b \f \n \r \t,
//   others \u00xx in lower case), everything else as is; an integer literal in -2^63..2^64-1 in
//   decimal; every other number as a double in shortest round-trip form, plain with at least one
//   fractional digit (1.0, 1000.0) when its decimal exponent is in -5..15, else d[.ddd]e+X /
//   d[.ddd]e-X; -0.0 keeps its sign.
//
// A JavaScript value hashes as the gateway hashes what JSON.stringify sends for it (so 5.0 is the
// integer 5, as JSON.stringify writes it). To hash the exact JSON text a client sends (1.0, 1e3,
// integers beyond 2^53), wrap it: new RawJson('1.0'). One limit: the gateway's JSON parser may
// round number literals with many significant digits or a large exponent (e.g. 1.25e25) to a
// neighbouring double; bind such numbers with `bind` (exact) or send them as strings.

const U64_MAX = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);

/** The exact JSON text of a value as the client sends it. */
export class RawJson {
  constructor(text) {
    if (typeof text !== 'string') throw new TypeError('RawJson takes the JSON text as a string');
    this.text = text;
  }
}

/** A number literal as written in JSON text (kept by parseExact). */
export class ExactNumber {
  constructor(text) {
    this.text = text;
  }
  toJSON() {
    return Number(this.text);
  }
}

function wellFormed(s) {
  if (typeof s.isWellFormed === 'function') return s.isWellFormed();
  return !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(^|[^\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s);
}

function floatText(x) {
  if (!Number.isFinite(x)) throw new RangeError('NaN and infinities are not JSON');
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const sign = x < 0 ? '-' : '';
  const r = Math.abs(x).toString(); // the shortest round-trip digits
  const [mant, expPart] = r.split('e');
  const [ip, fp = ''] = mant.split('.');
  const every = ip + fp;
  const stripped = every.replace(/^0+/, '');
  const e = stripped.length - 1 + (expPart ? parseInt(expPart, 10) : 0) - fp.length;
  const digits = stripped.replace(/0+$/, '') || '0';
  if (e >= -5 && e <= 15) {
    if (e >= 0) {
      const whole = digits.slice(0, e + 1).padEnd(e + 1, '0');
      const frac = digits.slice(e + 1) || '0';
      return `${sign}${whole}.${frac}`;
    }
    return `${sign}0.${'0'.repeat(-e - 1)}${digits}`;
  }
  const m = digits[0] + (digits.length > 1 ? `.${digits.slice(1)}` : '');
  return `${sign}${m}e${e > 0 ? '+' : '-'}${Math.abs(e)}`;
}

/** The gateway's form of a number literal. */
function numberText(lexeme) {
  if (/^-?\d+$/.test(lexeme)) {
    if (lexeme === '-0') return '-0.0';
    const n = BigInt(lexeme);
    if (n >= I64_MIN && n <= U64_MAX) return n.toString();
  }
  const x = Number(lexeme);
  if (!Number.isFinite(x)) throw new RangeError(`number out of range: ${lexeme}`);
  return floatText(x);
}

function writeString(s, out) {
  if (!wellFormed(s)) throw new TypeError('a string with a lone surrogate is not valid JSON');
  let r = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x22) r += '\\"';
    else if (c === 0x5c) r += '\\\\';
    else if (c < 0x20) {
      r +=
        c === 8 ? '\\b' : c === 12 ? '\\f' : c === 10 ? '\\n' : c === 13 ? '\\r' : c === 9 ? '\\t'
          : `\\u${c.toString(16).padStart(4, '0')}`;
    } else r += s[i];
  }
  out.push(r + '"');
}

/** Orders strings by code point (= by UTF-8 bytes), not by UTF-16 code unit. */
export function compareCodePoints(a, b) {
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const ca = a.codePointAt(i);
    const cb = b.codePointAt(j);
    if (ca !== cb) return ca - cb;
    i += ca > 0xffff ? 2 : 1;
    j += cb > 0xffff ? 2 : 1;
  }
  return a.length - i - (b.length - j);
}

function write(v, out, inArray) {
  if (v instanceof RawJson) return write(parseExact(v.text), out, inArray);
  if (v !== null && typeof v === 'object' && typeof v.toJSON === 'function' && !(v instanceof ExactNumber)) {
    v = v.toJSON();
  }
  if (v === null) return out.push('null');
  switch (typeof v) {
    case 'boolean':
      return out.push(v ? 'true' : 'false');
    case 'number':
      if (!Number.isFinite(v)) throw new RangeError('NaN and infinities are not JSON');
      return out.push(numberText(String(v)));
    case 'bigint':
      return out.push(numberText(v.toString()));
    case 'string':
      return writeString(v, out);
    case 'undefined':
    case 'function':
    case 'symbol':
      if (inArray) return out.push('null');
      throw new TypeError(`${typeof v} is not a JSON value`);
    default:
      break;
  }
  if (v instanceof ExactNumber) return out.push(numberText(v.text));
  if (Array.isArray(v)) {
    out.push('[');
    v.forEach((item, i) => {
      if (i) out.push(',');
      write(item, out, true);
    });
    return out.push(']');
  }
  const keys = Object.keys(v)
    .filter((k) => v[k] !== undefined && typeof v[k] !== 'function' && typeof v[k] !== 'symbol')
    .sort(compareCodePoints);
  out.push('{');
  keys.forEach((k, i) => {
    if (i) out.push(',');
    writeString(k, out);
    out.push(':');
    write(v[k], out, false);
  });
  return out.push('}');
}

/** The compact JSON the gateway hashes for a non-string value. */
export function canonicalJson(value) {
  const out = [];
  write(value, out, false);
  return out.join('');
}

const encoder = new TextEncoder();

function hex(bytes) {
  let s = '';
  for (const b of new Uint8Array(bytes)) s += b.toString(16).padStart(2, '0');
  return s;
}

/** UTF-8 bytes a `bind_sha256` digest is computed over. */
export function bindSha256Input(value) {
  if (value instanceof RawJson) value = parseExact(value.text);
  if (typeof value === 'string') {
    if (!wellFormed(value)) throw new TypeError('a string with a lone surrogate is not valid JSON');
    return encoder.encode(value);
  }
  return encoder.encode(canonicalJson(value));
}

/** What `bind_sha256` maps a pointer to: lowercase hex SHA-256 (WebCrypto). */
export async function bindSha256Digest(value) {
  const digest = await globalThis.crypto.subtle.digest('SHA-256', bindSha256Input(value));
  return hex(digest);
}

// ---- an exact JSON parser: number literals kept as written -------------------------------

/**
 * Parses JSON text like JSON.parse, except that numbers become ExactNumber (their literal), so
 * 1.0 stays a float and 9007199254740993 keeps its digits. Duplicate keys: the last wins.
 */
export function parseExact(text) {
  let i = 0;
  const fail = (what) => {
    throw new SyntaxError(`invalid JSON at ${i}: ${what}`);
  };
  const ws = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i])) i++;
  };
  const value = () => {
    ws();
    const c = text[i];
    if (c === '{') return object();
    if (c === '[') return array();
    if (c === '"') return string();
    if (c === '-' || (c >= '0' && c <= '9')) return number();
    for (const [word, v] of [['true', true], ['false', false], ['null', null]]) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return v;
      }
    }
    return fail('a value');
  };
  const number = () => {
    const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i));
    if (!m) fail('a number');
    i += m[0].length;
    return new ExactNumber(m[0]);
  };
  const string = () => {
    i++;
    let s = '';
    for (;;) {
      if (i >= text.length) fail('an unterminated string');
      const c = text[i++];
      if (c === '"') break;
      if (c === '\\') {
        const e = text[i++];
        const simple = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };
        if (e in simple) s += simple[e];
        else if (e === 'u') {
          const h = text.slice(i, i + 4);
          if (!/^[0-9a-fA-F]{4}$/.test(h)) fail('a \\u escape');
          s += String.fromCharCode(parseInt(h, 16));
          i += 4;
        } else fail('an escape');
      } else if (c < ' ') fail('a control character in a string');
      else s += c;
    }
    if (!wellFormed(s)) fail('a lone surrogate');
    return s;
  };
  const array = () => {
    i++;
    const a = [];
    ws();
    if (text[i] === ']') {
      i++;
      return a;
    }
    for (;;) {
      a.push(value());
      ws();
      if (text[i] === ',') i++;
      else if (text[i] === ']') {
        i++;
        return a;
      } else fail("',' or ']'");
    }
  };
  const object = () => {
    i++;
    const o = {};
    ws();
    if (text[i] === '}') {
      i++;
      return o;
    }
    for (;;) {
      ws();
      if (text[i] !== '"') fail('a key');
      const k = string();
      ws();
      if (text[i++] !== ':') fail("':'");
      Object.defineProperty(o, k, { value: value(), enumerable: true, writable: true, configurable: true });
      ws();
      if (text[i] === ',') i++;
      else if (text[i] === '}') {
        i++;
        return o;
      } else fail("',' or '}'");
    }
  };
  const v = value();
  ws();
  if (i !== text.length) fail('the end');
  return v;
}

const MISSING = Symbol('missing');

function pointerGet(doc, pointer) {
  if (pointer === '') return doc;
  if (!pointer.startsWith('/')) throw new TypeError(`${JSON.stringify(pointer)} is not a JSON Pointer`);
  let cur = doc;
  for (const raw of pointer.slice(1).split('/')) {
    const token = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (Array.isArray(cur)) {
      if (!/^(0|[1-9]\d*)$/.test(token) || Number(token) >= cur.length) return MISSING;
      cur = cur[Number(token)];
    } else if (cur !== null && typeof cur === 'object' && !(cur instanceof ExactNumber)) {
      if (!Object.prototype.hasOwnProperty.call(cur, token)) return MISSING;
      cur = cur[token];
    } else return MISSING;
  }
  return cur;
}

/**
 * `{pointer: value}` for each JSON Pointer (RFC 6901) present in `body` (an object, or JSON text
 * read with parseExact): the `bind` of exactly the fields your backend checked.
 */
export function select(body, pointers) {
  const doc = typeof body === 'string' ? parseExact(body) : body;
  const out = {};
  for (const p of pointers) {
    const v = pointerGet(doc, p);
    if (v !== MISSING) out[p] = v;
  }
  return out;
}
