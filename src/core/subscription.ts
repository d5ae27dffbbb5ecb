/**
 * What a stream reads: every row, or the rows of some channels, named exactly or by prefix
 * (`orders:*`). Pure; shared by request parsing, the hub, the replay and authorization.
 */
export interface Subscription {
  /** Canonical text, equal for equal subscriptions: `*`, or the sorted names and patterns. */
  readonly key: string;
  /** Every row (no `channel` asked for, or the pattern `*`). */
  readonly all: boolean;
  /** Channel names, sorted, without repeats. */
  readonly exact: readonly string[];
  /** Prefixes of the `NAME*` patterns (without the `*`), sorted, without repeats. */
  readonly prefixes: readonly string[];
}

/** Characters of a channel name: letters, digits and `_ . : @ / = -`; 1 to 191 of them. */
export const CHANNEL_NAME = /^[A-Za-z0-9_.:@/=-]{1,191}$/;
export const MAX_CHANNEL_CHARS = 191;

export const EVERY_ROW: Subscription = Object.freeze({
  key: '*',
  all: true,
  exact: [],
  prefixes: [],
});

/** Why a list of channels was refused (a 400 for a stream, a ConfigError for PUBLIC_CHANNELS). */
export class ChannelError extends Error {}

/**
 * The subscription of `values` (the `channel` parameters, or the patterns of a grant): each a
 * channel name, or a name followed by `*` for a prefix, or `*` alone for every row. No value
 * means every row. Throws ChannelError naming the first bad value, or when there are more than
 * `max`.
 */
export function parseChannels(values: readonly string[], max: number): Subscription {
  if (values.length === 0) return EVERY_ROW;
  if (values.length > max) {
    throw new ChannelError(`${values.length} channels asked for; at most ${max} per stream`);
  }
  const exact = new Set<string>();
  const prefixes = new Set<string>();
  for (const value of values) {
    if (value === '*') return EVERY_ROW;
    const prefix = value.endsWith('*') ? value.slice(0, -1) : null;
    const name = prefix ?? value;
    if (!CHANNEL_NAME.test(name)) {
      throw new ChannelError(
        `channel ${JSON.stringify(value)}: expected 1 to ${MAX_CHANNEL_CHARS} letters, digits or _ . : @ / = -, ` +
          'optionally ending in * for a prefix',
      );
    }
    if (prefix === null) exact.add(name);
    else prefixes.add(prefix);
  }
  // A name under one of the prefixes adds nothing.
  const prefixList = [...prefixes]
    .sort()
    .filter((p, i, all) => !all.some((q, j) => j !== i && p.startsWith(q) && q !== p));
  const exactList = [...exact].sort().filter((name) => !prefixList.some((p) => name.startsWith(p)));
  const key = [...exactList, ...prefixList.map((p) => `${p}*`)].join(',');
  return Object.freeze({ key, all: false, exact: exactList, prefixes: prefixList });
}

/** Whether a row of `channel` belongs to the subscription. */
export function matches(subscription: Subscription, channel: string): boolean {
  if (subscription.all) return true;
  if (subscription.exact.includes(channel)) return true;
  return subscription.prefixes.some((prefix) => channel.startsWith(prefix));
}

/**
 * The first part of `asked` that `granted` does not cover (a name, `p*`, or `*` for every row),
 * or null when it covers all of it.
 */
export function notCovered(asked: Subscription, granted: Subscription): string | null {
  if (granted.all) return null;
  if (asked.all) return '*';
  for (const name of asked.exact) if (!matches(granted, name)) return name;
  for (const prefix of asked.prefixes) {
    if (!granted.prefixes.some((p) => prefix.startsWith(p))) return `${prefix}*`;
  }
  return null;
}

/** No row at all: what an empty grant gives (parseChannels([]) is every row, as for a stream). */
export const NO_ROW: Subscription = Object.freeze({ key: '', all: false, exact: [], prefixes: [] });

/** Both subscriptions together (say, a token's grants and the public channels). */
export function union(a: Subscription, b: Subscription): Subscription {
  if (a.all || b.all) return EVERY_ROW;
  if (a.exact.length + a.prefixes.length + b.exact.length + b.prefixes.length === 0) return NO_ROW;
  return parseChannels(
    [...a.exact, ...b.exact, ...[...a.prefixes, ...b.prefixes].map((p) => `${p}*`)],
    Number.POSITIVE_INFINITY,
  );
}
