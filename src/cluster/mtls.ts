/**
 * Mutual TLS between the manager and its agents (docs/cluster.md): the server side's options, and who a verified
 * peer is. Only the vigil CA is trusted (not the system's roots), TLS 1.3 only, and a client without a valid
 * certificate from that CA fails the handshake — so an expired or foreign certificate never reaches a route. A
 * valid certificate of the wrong role does reach it, and is refused there with 403 (requirePeerRole).
 */
import type { ServerOptions } from "node:https";
import type { TLSSocket } from "node:tls";
import { VigilError, q } from "../errors.ts";
import { subjectOf } from "./ca.ts";
import type { CertBundle, CertRole, PeerIdentity } from "./types.ts";

/** Options for `https.createServer` that demand a client certificate from the vigil CA. */
export function mtlsServerOptions(bundle: CertBundle): ServerOptions {
  return {
    key: bundle.keyPem,
    cert: bundle.certPem,
    ca: [bundle.caPem],
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: "TLSv1.3",
  };
}

/**
 * Who is on the other end of `socket`, from its verified certificate; undefined when the socket is not TLS, not
 * authorized (the chain did not verify against the vigil CA), or the certificate is not a vigil subject.
 */
export function peerIdentity(socket: TLSSocket | { authorized?: boolean } | undefined): PeerIdentity | undefined {
  const tls = socket as TLSSocket | undefined;
  if (!tls || tls.authorized !== true || typeof tls.getPeerX509Certificate !== "function") return undefined;
  const cert = tls.getPeerX509Certificate();
  if (!cert) return undefined;
  try {
    const { role, name } = subjectOf(cert);
    return { role, name, fingerprint: cert.fingerprint256 };
  } catch {
    return undefined;
  }
}

/** The identity if it has `role`; VIGIL_UNAUTHENTICATED without one, VIGIL_FORBIDDEN (403) for another role. */
export function requirePeerRole(identity: PeerIdentity | undefined, role: CertRole): PeerIdentity {
  if (!identity) throw new VigilError("VIGIL_UNAUTHENTICATED", `This listener takes only a vigil ${role} certificate, and none was presented`);
  if (identity.role !== role) {
    throw new VigilError("VIGIL_FORBIDDEN", `Certificate ${q(`OU=${identity.role}, CN=${identity.name}`)} may not call this listener: it takes only OU=${role}`);
  }
  return identity;
}
