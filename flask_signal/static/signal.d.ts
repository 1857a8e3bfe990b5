// Types of flask_signal's browser client (signal.js).

/** The events a peer dispatches. */
export declare const EVENTS: readonly ["connect", "join", "leave", "signal", "error", "close"];

/** The hub refused a request: `status` is the HTTP status (null without one). */
export declare class SignalError extends Error {
  constructor(status: number | null, message: string);
  readonly status: number | null;
}

/** What the `connect` event carries. */
export interface ConnectData {
  id: string;
  cid: string;
  token: string;
  /** STUN/TURN servers the hub hands out (absent on hubs without them). */
  iceServers?: RTCIceServer[];
}

/** What `join` and `leave` carry (both reach the initiator only). */
export interface PeerData {
  id: string;
  cid: string;
}

export interface PeerEvents {
  connect: (data: ConnectData) => void;
  join: (data: PeerData) => void;
  leave: (data: PeerData) => void;
  signal: (data: any) => void;
  /** A send made before connecting that the hub refused. */
  error: (error: SignalError) => void;
  /** Last, once: null after close(), else why the stream ended. */
  close: (error: SignalError | null) => void;
}

export interface Options {
  /** Send cookies to a hub on another origin (it must allow credentials). */
  withCredentials?: boolean;
}

/** One peer of a swarm: `new Peer(url)` creates a swarm, `new Peer(url, id)` joins one. */
export declare class Peer {
  constructor(url: string, id?: string | null, options?: Options);
  readonly url: string;
  id: string | null;
  cid: string | null;
  token: string | null;
  readonly initiator: boolean;
  iceServers: RTCIceServer[];
  connected: boolean;
  closed: boolean;
  readonly streamUrl: string;
  readonly rtcConfiguration: RTCConfiguration;
  createPeerConnection(config?: RTCConfiguration): RTCPeerConnection;
  on<E extends keyof PeerEvents>(event: E, handler: PeerEvents[E]): this;
  off<E extends keyof PeerEvents>(event: E, handler?: PeerEvents[E]): this;
  /** To every peer (this one too), or to `cid` only; buffered until connected. */
  send(data: unknown, cid?: string | null): Promise<void>;
  write(data: unknown, cid?: string | null): Promise<void>;
  close(): void;
}

export interface SubscribeOptions extends Options {
  /** Start after this event id (the browser keeps track from then on). */
  lastEventId?: string;
}

/** A subscription to one or several channels; the browser resumes it after a drop. */
export declare class Subscription {
  constructor(url: string, channels: string | string[], options?: SubscribeOptions);
  readonly url: string;
  readonly channels: string[];
  lastEventId: string;
  closed: boolean;
  readonly connected: boolean;
  /** The stream opened (again). */
  on(event: "open" | "reconnect", handler: () => void): this;
  /** Refused by the hub (null after close()). */
  on(event: "close", handler: (error: SignalError | null) => void): this;
  /** An event: "message" for those published without a name. */
  on(event: string, handler: (data: any, message: MessageEvent) => void): this;
  off(event: string, handler?: (...args: any[]) => void): this;
  close(): void;
}

export declare function subscribe(
  url: string,
  channels: string | string[],
  options?: SubscribeOptions,
): Subscription;
