import { connect, createServer, type Server, type Socket } from 'node:net';
import { freePort } from './ledger-process.js';

/**
 * A TCP proxy on a fixed local port in front of a server (PostgreSQL here) that a test can cut and reopen: every
 * connection through it breaks at once and new ones are refused until it reopens, as in a network partition or
 * a database restart. The clients see what they would see then: transactions cut off, commits whose answer
 * never arrived, connections refused.
 */
export class TcpProxy {
  private readonly sockets = new Set<Socket>();
  /** Each connection's two sides, for freeze(). */
  private readonly pairs = new Set<readonly [Socket, Socket]>();
  private server: Server | undefined;
  private cutOff = false;

  private constructor(
    readonly port: number,
    private readonly targetHost: string,
    private readonly targetPort: number,
  ) {}

  /** A proxy in front of `target` (a URL with host and port), open. */
  static async start(target: URL): Promise<TcpProxy> {
    const proxy = new TcpProxy(await freePort(), target.hostname, Number(target.port || 5432));
    await proxy.open();
    return proxy;
  }

  /** `url` with its host and port replaced by the proxy's. */
  via(url: string): string {
    const proxied = new URL(url);
    proxied.hostname = '127.0.0.1';
    proxied.port = String(this.port);
    return proxied.toString();
  }

  open(): Promise<void> {
    this.cutOff = false;
    return new Promise((resolve, reject) => {
      this.server = createServer((inbound) => {
        if (this.cutOff) return inbound.destroy(); // accepted just as the cut began
        const outbound = connect(this.targetPort, this.targetHost);
        // Either side gone (closed or reset, as by a killed process) takes the other with it, as the network would
        // tell the peer: pipe() alone leaves the server's session open after an error, locks held.
        for (const [s, peer] of [
          [inbound, outbound],
          [outbound, inbound],
        ] as const) {
          this.sockets.add(s);
          s.on('error', () => s.destroy());
          s.on('close', () => {
            this.sockets.delete(s);
            peer.destroy();
          });
        }
        const pair = [inbound, outbound] as const;
        this.pairs.add(pair);
        inbound.on('close', () => this.pairs.delete(pair));
        inbound.pipe(outbound).pipe(inbound);
      })
        .once('error', reject) // the port taken meanwhile: the test fails instead of hanging
        .listen(this.port, '127.0.0.1', () => resolve());
    });
  }

  /**
   * Every open connection goes silent, as when a middlebox drops its flows: nothing passes either way from now
   * on, and neither side hears of it (no reset, no close). New connections pass as before.
   */
  freeze(): void {
    for (const [inbound, outbound] of this.pairs) {
      inbound.unpipe(outbound);
      outbound.unpipe(inbound);
      inbound.pause();
      outbound.pause();
    }
    this.pairs.clear();
  }

  /** Breaks every connection and stops listening. */
  cut(): Promise<void> {
    this.cutOff = true;
    return new Promise((resolve) => {
      for (const s of this.sockets) s.destroy();
      if (!this.server?.listening) return resolve();
      this.server.close(() => resolve());
    });
  }
}
