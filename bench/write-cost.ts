import { fork } from 'node:child_process';
import { writeSync } from 'node:fs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

// `node dist/bench/write-cost.js [streams] [rounds]`: what one small write to a loopback socket
// costs this process, socket.write() against a write(2) straight to the descriptor
// (fs.writeSync), alternating, each round over every socket; a child process reads them all.
// Prints the median µs per write: wall, user and system time. See docs/performance.md.

const READER = process.argv[2] === 'reader';

if (READER) {
  const [port, streams] = process.argv.slice(3).map(Number) as [number, number];
  const buffer = Buffer.alloc(65_536);
  for (let i = 0; i < streams; i++) {
    const socket = net.connect({
      port,
      host: '127.0.0.1',
      onread: { buffer, callback: () => true },
    });
    socket.on('error', () => {});
    if (i % 200 === 199) await sleep(5);
  }
} else {
  const streams = Number(process.argv[2] ?? 5000);
  const rounds = Number(process.argv[3] ?? 20);
  const sockets: net.Socket[] = [];
  const server = net.createServer({ noDelay: true }, (socket) => {
    socket.on('error', () => {});
    sockets.push(socket);
  });
  server.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  const { port } = server.address() as net.AddressInfo;
  const reader = fork(new URL(import.meta.url), ['reader', String(port), String(streams)]);
  for (let i = 0; i < 600 && sockets.length < streams; i++) await sleep(50);
  const frame = Buffer.from('2f\r\n<p data-id="123456" data-seq="123456">1234567890123</p>\n\r\n');
  const ways: Record<string, (socket: net.Socket) => void> = {
    'socket.write': (socket) => socket.write(frame),
    'fs.writeSync(fd)': (socket) => {
      const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
      if (fd !== undefined && fd >= 0 && socket.writableLength === 0) {
        try {
          const written = writeSync(fd, frame);
          if (written < frame.length) socket.write(frame.subarray(written));
          return;
        } catch {}
      }
      socket.write(frame);
    },
  };
  const results = new Map<string, { wall: number; user: number; sys: number }[]>();
  const names = Object.keys(ways);
  for (let round = 0; round < rounds; round++) {
    for (const name of round % 2 === 0 ? names : [...names].reverse()) {
      await sleep(30);
      const cpu = process.cpuUsage();
      const started = performance.now();
      for (const socket of sockets) ways[name]?.(socket);
      const wall = ((performance.now() - started) * 1000) / sockets.length;
      const used = process.cpuUsage(cpu);
      const list = results.get(name) ?? [];
      list.push({ wall, user: used.user / sockets.length, sys: used.system / sockets.length });
      results.set(name, list);
    }
  }
  const median = (values: number[]) => values.sort((a, b) => a - b)[values.length >> 1] ?? 0;
  for (const [name, list] of results) {
    const line = (['wall', 'user', 'sys'] as const)
      .map((k) => `${k} ${median(list.map((r) => r[k])).toFixed(2)}`)
      .join('  ');
    process.stdout.write(`${sockets.length} sockets  ${name.padEnd(16)}  µs/write  ${line}\n`);
  }
  reader.kill();
  for (const socket of sockets) socket.destroy();
  server.close();
}
