// flask_signal's browser client: swarms and channels over EventSource and fetch.
// An ES module without dependencies; types in signal.d.ts, served beside it.
//
//   import { Peer, subscribe } from "/signal/client.js?v=...";
//   const peer = new Peer("/signal");              // creates a swarm; new Peer(url, id) joins one
//   peer.on("connect", ({ id }) => share(id)).on("signal", (data) => show(data));
//   peer.send({ hello: "everyone" });              // buffered until connected
//   subscribe("/signal", ["news", "alerts"]).on("message", (data) => show(data));

/** The events a peer dispatches, in the Python client's names. */
export const EVENTS = Object.freeze(["connect", "join", "leave", "signal", "error", "close"]);

/** The hub refused a request: `status` is the HTTP status (null without one). */
export class SignalError extends Error {
  /** @param {number | null} status @param {string} message */
  constructor(status, message) {
    super(status ? `${status}: ${message}` : message);
    this.name = "SignalError";
    this.status = status;
  }
}

function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function baseUrl(url) {
  return String(new URL(url, globalThis.location ? globalThis.location.href : undefined)).replace(
    /\/+$/,
    "",
  );
}

async function refusal(response) {
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && body.error) message = String(body.error);
  } catch {
    // not JSON: keep the status text
  }
  return new SignalError(response.status, message);
}

class Emitter {
  constructor() {
    this._handlers = new Map();
  }

  /** Call `handler` for each `event`; returns this, so calls chain. */
  on(event, handler) {
    if (!this._handlers.has(event)) this._handlers.set(event, []);
    this._handlers.get(event).push(handler);
    this._listen?.(event);
    return this;
  }

  /** Stop calling `handler` (every handler of `event` without one). */
  off(event, handler) {
    const list = this._handlers.get(event) || [];
    this._handlers.set(event, handler ? list.filter((h) => h !== handler) : []);
    return this;
  }

  _emit(event, ...args) {
    for (const handler of [...(this._handlers.get(event) || [])]) {
      try {
        handler.apply(this, args);
      } catch (error) {
        // A failing handler must not stop the others, nor the stream.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}

/**
 * One peer of a swarm: `new Peer(url)` creates a swarm, `new Peer(url, id)` joins one.
 * `url` is the hub's base URL (the blueprint prefix, e.g. "/signal"). The stream opens at once.
 */
export class Peer extends Emitter {
  /**
   * @param {string} url
   * @param {string | null} [id]
   * @param {{ withCredentials?: boolean }} [options]
   */
  constructor(url, id = null, options = {}) {
    super();
    this.url = baseUrl(url);
    /** Swarm id, own connection id and secret token, known once connected. */
    this.id = id || null;
    this.cid = null;
    this.token = null;
    /** Whether this peer created the swarm. */
    this.initiator = !id;
    /** STUN/TURN servers from the hub, for RTCPeerConnection. */
    this.iceServers = [];
    this.connected = false;
    this.closed = false;
    this.withCredentials = Boolean(options.withCredentials);
    this._outbox = [];
    this._queue = Promise.resolve(); // sends go out one after another, in order
    this._source = new EventSource(this.streamUrl, { withCredentials: this.withCredentials });
    for (const event of ["connect", "join", "leave", "signal"]) {
      this._source.addEventListener(event, (message) => this._dispatch(event, message.data));
    }
    this._source.addEventListener("error", () => this._lost());
  }

  /** Where the stream is opened and signals are posted. */
  get streamUrl() {
    return this.id ? `${this.url}/${encodeURIComponent(this.id)}` : this.url;
  }

  /** `{ iceServers }`, ready for `new RTCPeerConnection(...)`. */
  get rtcConfiguration() {
    return { iceServers: this.iceServers };
  }

  /** A new RTCPeerConnection with the hub's ICE servers (and `config` over them). */
  createPeerConnection(config = {}) {
    return new RTCPeerConnection({ ...this.rtcConfiguration, ...config });
  }

  /**
   * Send a signal to every peer of the swarm (this one too), or to `cid` only.
   * As in moshpit, a string `_cid` key of an object is taken as `cid`. Before the stream
   * is connected, sends wait and go out in order once it is; a refused one also comes
   * as an `error` event. Resolves once the hub accepted it; rejects with a SignalError.
   */
  send(data, cid = null) {
    if (data && typeof data === "object" && !Array.isArray(data) && typeof data._cid === "string") {
      const { _cid, ...rest } = data;
      data = rest;
      cid = cid ?? _cid;
    }
    if (this.closed) return Promise.reject(new SignalError(null, "the peer is closed"));
    if (!this.connected) {
      return new Promise((resolve, reject) => this._outbox.push({ data, cid, resolve, reject }));
    }
    return this._post(data, cid);
  }

  /** moshpit's name for send. */
  write(data, cid = null) {
    return this.send(data, cid);
  }

  /** Leave the swarm (the initiator's close ends it); `close` handlers get null. */
  close() {
    this._finish(null);
  }

  _post(data, cid) {
    const body = { token: this.token, data };
    if (cid != null) body.cid = cid;
    const sent = this._queue.then(async () => {
      let response;
      try {
        response = await fetch(this.streamUrl, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(body),
          credentials: this.withCredentials ? "include" : "same-origin",
        });
      } catch (error) {
        throw new SignalError(null, `cannot reach ${this.streamUrl}: ${error.message}`);
      }
      if (!response.ok) throw await refusal(response);
    });
    this._queue = sent.catch(() => {});
    return sent;
  }

  _dispatch(event, text) {
    if (this.closed) return;
    const data = parse(text);
    if (event === "connect" && !this.connected) {
      this.id = data.id;
      this.cid = data.cid;
      this.token = data.token;
      this.iceServers = Array.isArray(data.iceServers) ? data.iceServers : [];
      this.connected = true;
      this._emit("connect", data);
      const outbox = this._outbox.splice(0);
      for (const item of outbox) {
        this._post(item.data, item.cid).then(item.resolve, (error) => {
          this._emit("error", error);
          item.reject(error);
        });
      }
      return;
    }
    this._emit(event, data);
  }

  async _lost() {
    // A swarm stream is never resumed: reconnecting would join again as another peer.
    if (this.closed) return;
    this._source.close();
    let error = new SignalError(null, "the stream ended");
    if (!this.connected) {
      // EventSource hides why it failed; ask the hub what a GET would have answered.
      try {
        const response = await fetch(this.streamUrl, {
          method: "HEAD",
          credentials: this.withCredentials ? "include" : "same-origin",
        });
        if (!response.ok) error = new SignalError(response.status, "the hub refused the stream");
      } catch {
        error = new SignalError(null, `cannot reach ${this.streamUrl}`);
      }
    }
    this._finish(error);
  }

  _finish(error) {
    if (this.closed) return;
    this.closed = true;
    this.connected = false;
    this._source.close();
    for (const item of this._outbox.splice(0)) {
      item.reject(error || new SignalError(null, "the peer is closed"));
    }
    this._emit("close", error);
  }
}

/**
 * A subscription to one or several channels. The browser resumes it by itself after a
 * drop (EventSource sends Last-Event-ID); `lastEventId` is where it is.
 */
export class Subscription extends Emitter {
  /**
   * @param {string} url
   * @param {string | string[]} channels
   * @param {{ withCredentials?: boolean, lastEventId?: string }} [options]
   */
  constructor(url, channels, options = {}) {
    super();
    this.channels = typeof channels === "string" ? [channels] : [...channels];
    if (!this.channels.length) throw new TypeError("subscribe to at least one channel");
    const query = new URLSearchParams(this.channels.map((name) => ["channel", name]));
    if (options.lastEventId) query.set("lastEventId", options.lastEventId);
    this.url = `${baseUrl(url)}/channels?${query}`;
    this.lastEventId = options.lastEventId || "";
    this.closed = false;
    this._listening = new Set();
    this._source = new EventSource(this.url, { withCredentials: Boolean(options.withCredentials) });
    this._source.addEventListener("open", () => this._emit("open"));
    this._source.addEventListener("error", () => {
      if (this._source.readyState === EventSource.CLOSED) {
        // Refused (not a 200 event stream): the browser gives up, and so does this.
        this.closed = true;
        this._emit("close", new SignalError(null, "the hub refused the subscription"));
      } else {
        this._emit("reconnect");
      }
    });
  }

  /** Whether the stream is open now (false while the browser reconnects). */
  get connected() {
    return this._source.readyState === EventSource.OPEN;
  }

  _listen(event) {
    if (["open", "reconnect", "close"].includes(event) || this._listening.has(event)) return;
    this._listening.add(event);
    this._source.addEventListener(event, (message) => {
      if (message.lastEventId) this.lastEventId = message.lastEventId;
      this._emit(event, parse(message.data), message);
    });
  }

  /** Stop following the channels; `close` handlers get null. */
  close() {
    if (this.closed) return;
    this.closed = true;
    this._source.close();
    this._emit("close", null);
  }
}

/** Follow `channels` (a name or a list) on the hub at `url`. */
export function subscribe(url, channels, options = {}) {
  return new Subscription(url, channels, options);
}
