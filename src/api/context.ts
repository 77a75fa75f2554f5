/**
 * Types shared by the HTTP layer: the services a route may call, and the per-request context the auth
 * middleware puts on every request (who is asking, under which request id).
 */
import type { HaAgent } from "../migration/ha-agent.ts";
import type { OpenAPIHono } from "@hono/zod-openapi";
import type { RequestContext } from "../auth/guard.ts";
import type { UserStore } from "../auth/users.ts";
import type { Transport } from "../auth/authenticate.ts";
import type { AuditLog } from "../audit/audit-log.ts";
import type { AuditService } from "../audit/audit-service.ts";
import type { Guard } from "../auth/guard.ts";
import type { VmService } from "../vm/vm-service.ts";
import type { ImageCatalog } from "../image/catalog.ts";
import type { ImageService } from "../image/image-service.ts";
import type { Logger } from "../log.ts";
import type { SnapshotService } from "../storage/snapshots.ts";
import type { CloneService } from "../storage/clones.ts";
import type { BundleService } from "../storage/bundle/bundle-service.ts";
import type { TrustStore } from "../storage/trust.ts";
import type { ProgressBus } from "../util/progress.ts";
import type { TaskLog } from "../util/task-log.ts";
import type { VtimeService } from "../vtime/vtime-service.ts";
import type { AccountService } from "../auth/account-service.ts";
import type { ProvenanceService } from "../provenance/provenance-service.ts";
import type { IntrospectionService } from "../introspection/service.ts";
import type { NetworkService } from "../network/network-service.ts";
import type { FirewallService } from "../network/firewall/firewall-service.ts";
import type { PostureService } from "../posture/posture-service.ts";
import type { ScanService } from "../posture/scan-service.ts";
import type { RecordingService } from "../recording/recording-service.ts";
import type { VisService } from "../network/vis-service.ts";
import type { AgentMigrations } from "../migration/agent-migrations.ts";
import type { MetricsService } from "../metrics/metrics-service.ts";
import type { PresentedToken } from "../auth/session.ts";

export interface ApiDeps {
  vms: VmService;
  users: UserStore;
  accounts: AccountService;
  provenance: ProvenanceService;
  audit: AuditLog;
  auditService: AuditService;
  guard: Guard;
  catalog: ImageCatalog;
  images: ImageService;
  snapshots: SnapshotService;
  clones: CloneService;
  bundles: BundleService;
  trust: TrustStore;
  progress: ProgressBus;
  /** The changes users asked for, running and recent (`GET /v1/tasks`). */
  tasks: TaskLog;
  vtime: VtimeService;
  introspection: IntrospectionService;
  network: NetworkService;
  firewall: FirewallService;
  posture: PostureService;
  scans: ScanService;
  recordings: RecordingService;
  /** The numbers of /metrics and GET /v1/vms/NAME/metrics. */
  metrics: MetricsService;
  /** Counters, mirrors, port forwards (absent: the virtual network is not set up; its routes answer 500). */
  vis?: VisService | undefined;
  /** The agent's side of live migrations (only on `vigil agent`). */
  migrations?: AgentMigrations | undefined;
  /** The agent's side of HA restarts (only on `vigil agent --shared-storage`). */
  haAgent?: HaAgent | undefined;
  host: { name: string; accelerator: string; accelReason: string; version: string; home: string };
  /** An agent's lease epoch (HostStatus.epoch; 0 without `--lease-db`). */
  clusterEpoch?: (() => number) | undefined;
  /** The vigil user the local unix socket maps to. */
  localUser: string;
  log: Logger;
}

export type Env = {
  /** `presented`: the token the request authenticated with, and whether by bearer header or session cookie (TCP only). */
  Variables: { ctx: RequestContext; presented: PresentedToken | undefined };
  /** `secure`: the listener is TLS (the session cookie then gets `Secure`). */
  Bindings: { transport?: Transport; remoteAddress?: string | undefined; secure?: boolean | undefined };
};

export type App = OpenAPIHono<Env>;
