import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

/** Memory and CPU of a set of processes, summed. */
export interface ProcessSample {
  /** The processes summed (the root and every descendant alive at the time). */
  readonly pids: readonly number[];
  /** Resident set, KiB (shared pages count once per process). */
  readonly rssKb: number;
  /** Private_Clean + Private_Dirty, KiB: memory no other process shares. */
  readonly privateKb: number;
  /** utime + stime, seconds. */
  readonly cpuS: number;
  /** Each process on its own; `fds` counts open file descriptors (streams, mostly). */
  readonly processes: readonly ProcessDetail[];
}

export interface ProcessDetail {
  readonly pid: number;
  readonly rssKb: number;
  readonly privateKb: number;
  readonly cpuS: number;
  readonly fds: number;
}

const CLOCK_TICKS = clockTicks();

/** The process `root` and all its descendants (found through the ppid field of /proc/PID/stat). */
export function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = readStat(Number(entry));
    if (stat === null) continue;
    const siblings = children.get(stat.ppid);
    if (siblings === undefined) children.set(stat.ppid, [Number(entry)]);
    else siblings.push(Number(entry));
  }
  const tree: number[] = [];
  const queue = [root];
  // Bounded: every pid is visited at most once, and /proc lists finitely many.
  const seen = new Set<number>();
  while (queue.length > 0) {
    const pid = queue.shift() as number;
    if (seen.has(pid)) continue;
    seen.add(pid);
    if (pid === root && readStat(root) === null) continue;
    tree.push(pid);
    queue.push(...(children.get(pid) ?? []));
  }
  return tree;
}

/** Sums memory (smaps_rollup) and CPU (stat) over `root` and its descendants. */
export function sampleTree(root: number): ProcessSample {
  const pids = processTree(root);
  let rssKb = 0;
  let privateKb = 0;
  let cpuS = 0;
  const processes: ProcessDetail[] = [];
  for (const pid of pids) {
    const stat = readStat(pid);
    const memory = readRollup(pid);
    if (stat === null || memory === null) continue; // exited between the scan and the read
    const cpu = stat.cpuTicks / CLOCK_TICKS;
    processes.push({ pid, ...memory, cpuS: cpu, fds: countFds(pid) });
    cpuS += cpu;
    rssKb += memory.rssKb;
    privateKb += memory.privateKb;
  }
  return { pids: processes.map((p) => p.pid), rssKb, privateKb, cpuS, processes };
}

/** CPU seconds (utime + stime) of one process, or null once it is gone. */
export function cpuSeconds(pid: number): number | null {
  const stat = readStat(pid);
  return stat === null ? null : stat.cpuTicks / CLOCK_TICKS;
}

/** Whether `pid` exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  const stat = readStat(pid);
  return stat !== null && stat.state !== 'Z';
}

/**
 * CPU seconds the whole machine has been busy (all cores: /proc/stat's first line without idle
 * and iowait), to see what else ran beside a run.
 */
export function machineBusySeconds(): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
  const ticks = line.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = ticks.reduce((sum, n) => sum + n, 0);
  return (total - (ticks[3] ?? 0) - (ticks[4] ?? 0)) / CLOCK_TICKS;
}

/** Pages the kernel holds for TCP buffers, machine-wide (/proc/net/sockstat "TCP: … mem N"). */
export function tcpMemPages(): number {
  const text = readFileSync('/proc/net/sockstat', 'utf8');
  const match = /^TCP:.*\bmem (\d+)/m.exec(text);
  return match === null ? 0 : Number(match[1]);
}

interface Stat {
  readonly ppid: number;
  readonly state: string;
  readonly cpuTicks: number;
}

function readStat(pid: number): Stat | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
  return {
    state: fields[0] ?? '?',
    ppid: Number(fields[1]),
    cpuTicks: Number(fields[11]) + Number(fields[12]),
  };
}

function readRollup(pid: number): { rssKb: number; privateKb: number } | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  } catch {
    return null;
  }
  const field = (name: string) =>
    Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0);
  return { rssKb: field('Rss'), privateKb: field('Private_Clean') + field('Private_Dirty') };
}

function countFds(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return 0;
  }
}

function clockTicks(): number {
  try {
    const ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isInteger(ticks) && ticks > 0 ? ticks : 100;
  } catch {
    return 100;
  }
}
