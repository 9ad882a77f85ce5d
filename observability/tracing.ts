import { appendFile, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { context, propagation, ROOT_CONTEXT, trace, type Context, type Link, type Span, type SpanContext, type Tracer } from '@opentelemetry/api';
import { ExportResultCode, hrTimeToMicroseconds, type ExportResult } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { NodeSDK } from '@opentelemetry/sdk-node';
import {
  BatchSpanProcessor,
  ConsoleSpanExporter,
  ParentBasedSampler,
  TraceIdRatioBasedSampler,
  type ReadableSpan,
  type SpanExporter,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace-base';

export interface TracingSettings {
  service: string;
  version: string;
  instanceId?: string;
  /** otlp: OTLP/HTTP to `endpoint`; console: stdout; file: JSON lines in `file`; none: spans are not made. */
  exporter: 'otlp' | 'console' | 'file' | 'none';
  endpoint?: string;
  file?: string;
  /** Share of new traces sampled (0..1); a request carrying a sampled traceparent is always followed. */
  samplingRatio: number;
}

export interface Tracing {
  /** Flushes the spans not yet exported, then stops. */
  shutdown(): Promise<void>;
}

/**
 * The one tracing bootstrap (@opentelemetry/sdk-node): resource attributes, the exporter, the batch span
 * processor, parent-based ratio sampling, W3C trace context propagation and AsyncLocalStorage context. Every
 * service process starts it first (lib/service-main.ts). Spans are made by our own layers (lib/grpc.ts,
 * gateway hooks, lib/db.ts, the ledger batcher, the outbox relay, lib/consumer.ts), not by monkey-patching
 * instrumentations: this package is ESM, and the ledger's SQL runs in worker threads.
 * Extra processors (tests: an in-memory exporter) may be given.
 */
export function startTracing(settings: TracingSettings, extraProcessors: SpanProcessor[] = []): Tracing {
  const processors = [...extraProcessors];
  const exporter = spanExporter(settings);
  if (exporter) processors.push(new BatchSpanProcessor(exporter, { maxQueueSize: 8192, maxExportBatchSize: 1024, scheduledDelayMillis: 1000 }));
  if (processors.length === 0) return { shutdown: async () => undefined };
  const sdk = new NodeSDK({
    resource: resourceFromAttributes({
      'service.name': settings.service,
      'service.version': settings.version,
      'service.instance.id': settings.instanceId ?? `${os.hostname()}-${process.pid}`,
    }),
    autoDetectResources: false,
    spanProcessors: processors,
    sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(settings.samplingRatio) }),
    instrumentations: [],
  });
  sdk.start();
  return { shutdown: () => sdk.shutdown() };
}

function spanExporter(settings: TracingSettings): SpanExporter | undefined {
  switch (settings.exporter) {
    case 'otlp':
      return new OTLPTraceExporter({ url: `${settings.endpoint!.replace(/\/$/, '')}/v1/traces` });
    case 'console':
      return new ConsoleSpanExporter();
    case 'file':
      return new JsonLinesSpanExporter(settings.file!);
    case 'none':
      return undefined;
  }
}

/** Spans as JSON lines in a file: traces without a collector (`make dev`; `npm run trace` reads them). */
export class JsonLinesSpanExporter implements SpanExporter {
  private ready: Promise<unknown> | undefined;

  constructor(private readonly file: string) {}

  export(spans: ReadableSpan[], done: (result: ExportResult) => void): void {
    this.ready ??= mkdir(path.dirname(this.file), { recursive: true });
    const lines = spans.map((s) => JSON.stringify(spanRecord(s))).join('\n') + '\n';
    this.ready
      .then(() => appendFile(this.file, lines))
      .then(
        () => done({ code: ExportResultCode.SUCCESS }),
        (error: unknown) => done({ code: ExportResultCode.FAILED, error: error as Error }),
      );
  }

  async shutdown(): Promise<void> {
    await this.ready;
  }
}

export interface SpanRecord {
  service: string;
  scope: string;
  name: string;
  kind: number;
  traceId: string;
  spanId: string;
  parentSpanId: string | undefined;
  links: { traceId: string; spanId: string }[];
  startUs: number;
  durationUs: number;
  status: number;
  attributes: Record<string, unknown>;
}

export function spanRecord(s: ReadableSpan): SpanRecord {
  return {
    service: String(s.resource.attributes['service.name'] ?? ''),
    scope: s.instrumentationScope.name,
    name: s.name,
    kind: s.kind,
    traceId: s.spanContext().traceId,
    spanId: s.spanContext().spanId,
    parentSpanId: s.parentSpanContext?.spanId,
    links: s.links.map((l) => ({ traceId: l.context.traceId, spanId: l.context.spanId })),
    startUs: hrTimeToMicroseconds(s.startTime),
    durationUs: hrTimeToMicroseconds(s.duration),
    status: s.status.code,
    attributes: { ...s.attributes },
  };
}

// --- helpers every layer uses -----------------------------------------------------------------------------

export function tracer(scope: string): Tracer {
  return trace.getTracer(scope);
}

/** The W3C traceparent of a context (the active one by default); '' when it has no valid span. */
export function traceparentOf(ctx: Context = context.active()): string {
  const carrier: Record<string, string> = {};
  propagation.inject(ctx, carrier);
  return carrier['traceparent'] ?? '';
}

/** The context a traceparent (from a header, a metadata entry, an outbox row) continues. */
export function contextOf(traceparent: string | undefined): Context {
  return traceparent ? propagation.extract(ROOT_CONTEXT, { traceparent }) : ROOT_CONTEXT;
}

/** A link to the span of a context, when it has one. */
export function linkTo(ctx: Context): Link[] {
  const sc: SpanContext | undefined = trace.getSpanContext(ctx);
  return sc && trace.isSpanContextValid(sc) ? [{ context: sc }] : [];
}

/** Links a span keeps at most: OpenTelemetry's default limit; building more is work the SDK drops. */
const MAX_LINKS = 128;

/** Links to the spans of the first callers' contexts (at most MAX_LINKS): one span that serves many requests. */
export function linksTo(contexts: readonly Context[]): Link[] {
  return contexts.slice(0, MAX_LINKS).flatMap(linkTo);
}

/**
 * The span of one call made for several callers: a root span linked to each of them, not a child of whichever
 * caller's turn happened to send it (the others' traces would lack it, and that one's would hold theirs).
 */
export function mergedCallSpan(contexts: readonly Context[]): { parent: Context; links: Link[] } {
  return { parent: ROOT_CONTEXT, links: linksTo(contexts) };
}

/** Whether spans made now would be recorded (a sampled span is active): cheap paths skip span work otherwise. */
export function recording(ctx: Context = context.active()): boolean {
  return trace.getSpan(ctx)?.isRecording() ?? false;
}

/** Ends a span with the outcome of `work`, which runs with the span active. */
export async function inSpan<T>(span: Span, parent: Context, work: () => Promise<T>): Promise<T> {
  try {
    return await context.with(trace.setSpan(parent, span), work);
  } catch (error) {
    span.recordException(error as Error);
    span.setStatus({ code: 2, message: error instanceof Error ? error.message : String(error) });
    throw error;
  } finally {
    span.end();
  }
}
