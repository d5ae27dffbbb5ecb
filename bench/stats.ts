/** Exact percentiles of latency samples (ms). */
export interface LatencySummary {
  readonly samples: number;
  readonly min: number | null;
  readonly p50: number | null;
  readonly p90: number | null;
  readonly p99: number | null;
  readonly max: number | null;
  readonly mean: number | null;
}

/** Sorts the samples of every client together and reads nearest-rank percentiles. */
export function summarize(parts: readonly Float32Array[]): LatencySummary {
  const total = parts.reduce((sum, part) => sum + part.length, 0);
  const all = new Float32Array(total);
  let at = 0;
  let sum = 0;
  for (const part of parts) {
    all.set(part, at);
    at += part.length;
    for (const value of part) sum += value;
  }
  all.sort();
  const rank = (p: number) => (total === 0 ? null : round(all[Math.ceil(p * total) - 1] as number));
  return {
    samples: total,
    min: total === 0 ? null : round(all[0] as number),
    p50: rank(0.5),
    p90: rank(0.9),
    p99: rank(0.99),
    max: total === 0 ? null : round(all[total - 1] as number),
    mean: total === 0 ? null : round(sum / total),
  };
}

/** Rounds to 2 decimals (figures in ms, KB, s). */
export function round(value: number, decimals = 2): number {
  const scale = 10 ** decimals;
  return Math.round(value * scale) / scale;
}

/** A plain-text table: one header row, right-aligned columns. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((title, column) =>
    Math.max(title.length, ...rows.map((row) => (row[column] ?? '').length)),
  );
  const line = (cells: readonly string[]) =>
    cells.map((cell, column) => cell.padStart(widths[column] as number)).join('  ');
  return [line(header), line(widths.map((width) => '-'.repeat(width))), ...rows.map(line)].join(
    '\n',
  );
}
