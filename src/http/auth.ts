import { createPublicKey, type KeyObject } from 'node:crypto';
import { errors, type JWTPayload, jwtVerify } from 'jose';
import { type Config, MAX_GRANTED_CHANNELS } from '../config.js';
import {
  ChannelError,
  notCovered,
  parseChannels,
  type Subscription,
  union,
} from '../core/subscription.js';

/**
 * Authorization of subscribers: which channels a stream may read, from a JWT whose `channels`
 * claim lists names and patterns (`orders:*`, `*`), plus the PUBLIC_CHANNELS anyone may read.
 * Pure apart from the clock: no I/O, no cache (a signature check costs microseconds next to a
 * stream that lasts minutes).
 */

/** Where a request may carry its token, in order of precedence. */
export interface Credentials {
  /** The Authorization header (`Bearer <token>`). */
  readonly authorization?: string | undefined;
  /** The Cookie header; the token is the `rowcast_token` cookie. */
  readonly cookie?: string | undefined;
  /** The `access_token` query parameter (EventSource cannot send headers). */
  readonly accessToken?: string | null | undefined;
}

export type AuthOutcome =
  | {
      readonly ok: true;
      /** When the token expires (ms since the epoch), or null when the stream needs no token. */
      readonly expiresAt: number | null;
    }
  | {
      readonly ok: false;
      readonly status: 401 | 403;
      /** One line, ending in \n; never the token. */
      readonly body: string;
      readonly headers: Record<string, string>;
    };

export interface Authorizer {
  /** Whether a stream asking for `asked` may be served; `now` is ms since the epoch. */
  authorize(credentials: Credentials, asked: Subscription, now?: number): Promise<AuthOutcome>;
}

export const TOKEN_COOKIE = 'rowcast_token';

// Clocks of the token issuer and of rowcast drift apart by a few seconds; more would stretch
// the life of a token an operator means to be short.
const CLOCK_TOLERANCE_S = 5;

const REALM = 'Bearer realm="rowcast"';

/** The authorizer of the configuration, or null when authorization is off (no key set). */
export function createAuthorizer(
  config: Pick<Config, 'subscriberAuth' | 'jwtIssuer' | 'jwtAudience' | 'publicChannels'>,
): Authorizer | null {
  const auth = config.subscriberAuth;
  if (auth === null) return null;
  // The key is imported once; loadConfig has already checked that it parses and fits.
  const key: Uint8Array | KeyObject =
    auth.kind === 'hs256' ? auth.secret : createPublicKey({ key: auth.keyPem, format: 'pem' });
  // One algorithm, from the configuration: a token cannot pick `none`, nor HS256 with the public
  // key as its secret.
  const algorithm = auth.kind === 'hs256' ? 'HS256' : auth.algorithm;
  const options = {
    algorithms: [algorithm],
    requiredClaims: ['exp'],
    clockTolerance: CLOCK_TOLERANCE_S,
    ...(config.jwtIssuer === null ? {} : { issuer: config.jwtIssuer }),
    ...(config.jwtAudience === null ? {} : { audience: config.jwtAudience }),
  };
  const publicChannels = config.publicChannels;

  const verify = async (token: string, now: number): Promise<Verified> => {
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, key, { ...options, currentDate: new Date(now) }));
    } catch (err) {
      return { ok: false, why: whyRefused(err, algorithm) };
    }
    return grantOf(payload);
  };

  return {
    async authorize(credentials, asked, now = Date.now()) {
      const token = tokenOf(credentials);
      const publicEnough = publicChannels !== null && notCovered(asked, publicChannels) === null;
      if (token === null) return publicEnough ? OPEN : noToken();
      // A token sent for public channels is still checked, so that a client learns its token is
      // bad (and drops it) rather than finding out on the first private channel.
      const verified = await verify(token, now);
      if (!verified.ok) return invalidToken(verified.why);
      // Public channels are not cut when the token expires: the stream does not depend on it.
      if (publicEnough) return OPEN;
      const missing = notCovered(asked, together(verified.channels, publicChannels));
      if (missing !== null) return notGranted(missing);
      return { ok: true, expiresAt: verified.expiresAt };
    },
  };
}

type Verified =
  | { readonly ok: true; readonly channels: Subscription | null; readonly expiresAt: number }
  | { readonly ok: false; readonly why: string };

/** The token's grants and the public channels together; null stands for none. */
function together(token: Subscription | null, open: Subscription | null): Subscription {
  if (token === null) return open ?? NOTHING;
  return open === null ? token : union(token, open);
}

/**
 * No channel at all. Never passed to union() or built by parseChannels, where no value means
 * every row; notCovered() reads it correctly as granting nothing.
 */
const NOTHING: Subscription = Object.freeze({ key: '', all: false, exact: [], prefixes: [] });

/**
 * The token of a request: the Authorization header, else the cookie, else the query. Only the
 * first place that has one counts: a bad header token is not rescued by a cookie.
 */
export function tokenOf(credentials: Credentials): string | null {
  // A Bearer header that is not one token is still the token sent: jose refuses it, as a 401
  // that names the header's problem. Another scheme (a proxy's Basic) is not ours to read.
  const bearer = /^Bearer[ \t]+(.+)$/i.exec(credentials.authorization ?? '')?.[1]?.trim();
  if (bearer !== undefined && bearer !== '') return bearer;
  const cookie = cookieValue(credentials.cookie, TOKEN_COOKIE);
  if (cookie !== null) return cookie;
  const query = credentials.accessToken;
  return query === undefined || query === null || query === '' ? null : query;
}

/** The first cookie called `name` in a Cookie header, or null (an empty value counts as none). */
function cookieValue(header: string | undefined, name: string): string | null {
  if (header === undefined) return null;
  for (const pair of header.split(';')) {
    const eq = pair.indexOf('=');
    if (eq === -1 || pair.slice(0, eq).trim() !== name) continue;
    const value = pair
      .slice(eq + 1)
      .trim()
      .replace(/^"(.*)"$/, '$1');
    return value === '' ? null : value;
  }
  return null;
}

/** The channels and expiry a verified payload grants, or why it grants none. */
function grantOf(payload: JWTPayload): Verified {
  const claim = payload.channels;
  if (claim === undefined) return { ok: false, why: 'the token has no channels claim' };
  if (!Array.isArray(claim) || !claim.every((value) => typeof value === 'string')) {
    return { ok: false, why: 'the channels claim is not an array of strings' };
  }
  if (claim.length > MAX_GRANTED_CHANNELS) {
    return { ok: false, why: `the channels claim lists more than ${MAX_GRANTED_CHANNELS} entries` };
  }
  const bad = claim.findIndex((value) => !isPattern(value));
  if (bad !== -1) {
    return {
      ok: false,
      why: `channels[${bad}] of the token is not a channel name or pattern (letters, digits, _ . : @ / = -, optionally ending in *)`,
    };
  }
  // requiredClaims made jose check that exp is there and a number. The stream ends when the
  // token stops being accepted, exp plus the tolerance: a client that reconnects then is refused
  // at once, rather than served a stream the hub ends a second later.
  const expiresAt = ((payload.exp as number) + CLOCK_TOLERANCE_S) * 1000;
  // An empty list grants no channel (parseChannels would read it as every row).
  const channels = claim.length === 0 ? null : parseChannels(claim, MAX_GRANTED_CHANNELS);
  return { ok: true, channels, expiresAt };
}

function isPattern(value: string): boolean {
  try {
    parseChannels([value], 1);
    return true;
  } catch (err) {
    if (err instanceof ChannelError) return false;
    throw err;
  }
}

/**
 * Why jose refused a token, in words fit for a WWW-Authenticate quoted string (RFC 6750 §3: no
 * `"` nor `\`). Every failure is a refusal, jose's TypeErrors included (a non-string `iss`):
 * authorization fails closed.
 */
function whyRefused(err: unknown, algorithm: string): string {
  if (err instanceof errors.JWTExpired) return 'the token has expired';
  if (err instanceof errors.JWTClaimValidationFailed) {
    if (err.reason === 'missing') return `the token has no ${err.claim} claim`;
    if (err.reason === 'invalid') return `the ${err.claim} claim of the token is invalid`;
    if (err.claim === 'nbf') return 'the token is not valid yet (nbf)';
    if (err.claim === 'iss') return 'the token has another issuer (iss)';
    if (err.claim === 'aud') return 'the token is for another audience (aud)';
    return `the ${err.claim} claim of the token is invalid`;
  }
  if (err instanceof errors.JOSEAlgNotAllowed) return `the token is not signed with ${algorithm}`;
  if (err instanceof errors.JWSSignatureVerificationFailed) {
    return 'the token signature does not verify';
  }
  if (err instanceof errors.JWSInvalid || err instanceof errors.JWTInvalid) {
    return 'the token is not a well-formed JWT';
  }
  return 'the token could not be verified';
}

const OPEN: AuthOutcome = Object.freeze({ ok: true, expiresAt: null });

/** RFC 6750 §3.1: a request without a token gets the challenge without an error code. */
function noToken(): AuthOutcome {
  return {
    ok: false,
    status: 401,
    body: `this stream needs a token: send Authorization: Bearer <token>, the ${TOKEN_COOKIE} cookie, or ?access_token=<token>\n`,
    headers: { 'WWW-Authenticate': REALM },
  };
}

function invalidToken(why: string): AuthOutcome {
  return {
    ok: false,
    status: 401,
    body: `invalid token: ${why}\n`,
    headers: {
      'WWW-Authenticate': `${REALM}, error="invalid_token", error_description="${why}"`,
    },
  };
}

/** `missing` is a channel name or pattern (or `*`): none of them holds `"` or `\`. */
function notGranted(missing: string): AuthOutcome {
  const why = `channel "${missing}" is not granted by the token`;
  return {
    ok: false,
    status: 403,
    body: `${why}\n`,
    headers: {
      'WWW-Authenticate': `${REALM}, error="insufficient_scope", error_description="channel ${missing} is not granted by the token"`,
    },
  };
}
