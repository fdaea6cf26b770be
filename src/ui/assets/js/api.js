// The REST API as the page calls it: the bearer token from sign-in (kept in
// sessionStorage, so it lasts as long as the tab), JSON in and out, and the API's own
// error words ({"error": kind, "message": text}) as the message of every failure.

const TOKEN_KEY = 'shorthorn.token';

/** A failed call: `status` 0 when the manager did not answer at all. */
export class ApiError extends Error {
  constructor(status, kind, message) {
    super(message);
    this.status = status;
    this.kind = kind;
  }
}

let onSignedOut = () => {};

/** `fn(message)` is called when the API refuses the token of a signed-in page. */
export function whenSignedOut(fn) {
  onSignedOut = fn;
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** Checks `candidate` against the API and keeps it; throws the API's refusal. */
export async function signIn(candidate) {
  const status = await request('GET', '/v1/cluster', undefined, candidate.trim());
  sessionStorage.setItem(TOKEN_KEY, candidate.trim());
  return status.data;
}

/** The headers of a call with the signed-in token. */
export function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${token()}`, ...extra };
}

async function request(method, path, body, bearer = token()) {
  const headers = { Authorization: `Bearer ${bearer}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
  } catch (err) {
    throw new ApiError(0, 'unreachable', `the manager did not answer (${err.message})`);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) {
    const message = data && typeof data === 'object' && data.message
      ? data.message
      : `${response.status} ${response.statusText}${typeof data === 'string' ? `: ${data}` : ''}`;
    const err = new ApiError(response.status, data?.error || 'http', message);
    if (response.status === 401 && bearer === token() && token()) {
      signOut();
      onSignedOut(message);
    }
    throw err;
  }
  return { status: response.status, data };
}

export const get = async (path) => (await request('GET', path)).data;
export const post = (path, body = {}) => request('POST', path, body);
export const put = (path, body) => request('PUT', path, body);
export const del = (path) => request('DELETE', path);

/** A path segment, escaped. */
export const seg = (text) => encodeURIComponent(text);
