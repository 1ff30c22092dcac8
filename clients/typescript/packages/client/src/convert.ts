/** Wire JSON (snake_case, as Envoy prints it) to the camelCase objects the
 *  client returns; each converted object keeps the original as `raw`. */

/** Fields holding user or free-form JSON: their contents keep the server's keys
 *  (`additionalInput.config_file` stays as the caller wrote it). */
const OPAQUE = new Set(["additional_input", "additional_output", "data", "details"]);

export function camelKey(key: string): string {
  return key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** Converts `raw` recursively; every object gets a non-enumerable `raw`
 *  (so JSON.stringify of a result does not print it twice). */
export function fromWire<T>(raw: unknown): T {
  return convert(raw) as T;
}

function convert(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(convert);
  if (!isObject(value)) return value;
  const out: Record<string, unknown> = {};
  for (const [key, inner] of Object.entries(value)) {
    out[camelKey(key)] = OPAQUE.has(key) ? inner : convert(inner);
  }
  Object.defineProperty(out, "raw", { value, enumerable: false });
  return out;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null;
}
