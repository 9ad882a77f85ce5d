import type { Logger } from './logger.js';

/**
 * Runs `work` every `intervalMs`, never two runs at once; a failed run is logged and the next one tries again.
 * `stop` waits for the run in progress.
 */
export class PeriodicTask {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;

  constructor(
    private readonly name: string,
    private readonly work: () => Promise<unknown>,
    private readonly intervalMs: number,
    private readonly logger: Logger,
  ) {}

  start(): void {
    this.timer = setInterval(() => {
      this.running ??= this.work()
        .catch((err: unknown) => this.logger.warn({ err, task: this.name }, 'periodic task failed; will retry'))
        .then(() => undefined)
        .finally(() => (this.running = undefined));
    }, this.intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
  }
}
