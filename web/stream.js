// One livereel stream: WebSocket signaling, the WebRTC peer connection that carries
// the video, and the `control` data channel. No UI here; app.js listens to events.
//
// Events (CustomEvent, details in `event.detail`):
//   "state"    {state: "connecting" | "live" | "reconnecting" | "closed" | "failed", reason?, error?}
//              reason: a plain sentence; error: the server's error message, when it
//              refused or ended the session with one. A stream that has ended tells
//              why once: later closes (socket, channel, peer) of the same end are quiet.
//              "reconnecting": in cluster mode the session's worker failed and the session
//              goes on on another one; the stream offers there by itself (a new peer
//              connection, the same signaling socket and session).
//   "message"  a parsed server message from the data channel or the socket; on the socket,
//              before the answer, a cluster with no free place may send
//              {type: "queued", position, detail} (position 1: next in line), again as
//              the line moves; the state stays "connecting"
//   "frame"    {now, metadata} for every presented video frame
//
// Controls survive a move: `pending` keeps each control sent and not yet acknowledged
// by an "applied" (one per kind: prompt, camera, reset, pause/resume; a later one of a
// kind replaces the earlier). While the session is between control channels (state
// "reconnecting", or "live" with no open channel) `send` only keeps the message; when a
// control channel opens, the stream sends every pending message, in the order sent.
// What the old channel took after its worker died is sent again that way too.

export class Stream extends EventTarget {
  constructor(video, { iceServers = [] } = {}) {
    super();
    this.video = video;
    this.iceServers = iceServers;
    this.pc = null;
    this.ws = null;
    this.channel = null;
    this.session = null;
    this.state = "closed";
    this.timings = {};
    this.pending = new Map(); // kind -> the latest control of that kind not yet acknowledged
  }

  /** Open a session: offer -> answer over /ws (with the server's token, if it has
   * one), then media and the control channel. Forgets the last session's pending controls. */
  async connect({ prompt, seed, token } = {}) {
    this.close();
    this.timings = { start: performance.now() };
    this._setState("connecting");
    const pc = this._newPeer();
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringDone(pc);
    const url = new URL("/ws", location.href);
    if (token) url.searchParams.set("token", token);
    const ws = new WebSocket(url.href.replace(/^http/, "ws"));
    this.ws = ws;
    ws.onmessage = (e) => this._onSignal(e.data);
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      // 1001: the server is going away; 1006: the socket dropped with no close at all.
      const gone = e.code === 1001 || e.code === 1006;
      const ended = e.reason ? `The server ended the session: ${e.reason}.` : "The server ended the session.";
      this._setState("closed", gone ? "The server stopped." : ended);
    };
    ws.onerror = () => this.ws === ws && this.state === "connecting" && this._setState("failed", "Cannot reach the server.");
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.addEventListener("close", () => reject(new Error("signaling socket closed")), { once: true });
    });
    const offer = { type: "offer", sdp: pc.localDescription.sdp };
    if (prompt) offer.prompt = prompt;
    if (Number.isInteger(seed)) offer.seed = seed;
    this.timings.offerSent = performance.now();
    ws.send(JSON.stringify(offer));
  }

  /** A new peer connection (recvonly video, the control channel) as this.pc. */
  _newPeer() {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    pc.addTransceiver("video", { direction: "recvonly" });
    const channel = pc.createDataChannel("control");
    this.channel = channel;
    channel.onmessage = (e) => this._onMessage(e.data);
    channel.onopen = () => this.channel === channel && this._sendPending();
    channel.onclose = () => this._mediaEnded(pc, "The stream stopped.");
    pc.ontrack = (e) => {
      this.video.srcObject = e.streams[0] ?? new MediaStream([e.track]);
      this.video.play().catch(() => {});
      this._watchFrames();
    };
    pc.onconnectionstatechange = () => {
      if (this.pc !== pc) return;
      const s = pc.connectionState;
      if (s === "connected") this._setState("live");
      else if (s === "failed") this._setState("failed", "The video connection failed.");
      else if (s === "closed" || s === "disconnected") this._mediaEnded(pc, "The video connection was lost.");
    };
    return pc;
  }

  /** Cluster mode: the session moved to another worker. Offer there from a new peer
   * connection on the same socket (the old one's events are ignored from now on). */
  async _reconnect(ws, detail) {
    const old = this.pc;
    this._setState("reconnecting", detail ? `Reconnecting: ${detail}.` : "Reconnecting.");
    const pc = this._newPeer();
    if (old) old.close();
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringDone(pc);
    if (this.ws !== ws || this.pc !== pc || ws.readyState !== WebSocket.OPEN) return;
    this.timings.reconnect = performance.now();
    ws.send(JSON.stringify({ type: "offer", sdp: pc.localDescription.sdp }));
  }

  /** Send a control message (an object) on the data channel and keep it until it is
   * acknowledged. Between channels of a live session it is only kept (sent when the next
   * channel opens); false when there is no session to send it to. */
  send(message) {
    const open = this.channel?.readyState === "open";
    if (!open && this.state !== "live" && this.state !== "reconnecting") return false;
    const kind = KINDS[message.type];
    if (kind) {
      this.pending.delete(kind); // re-added last: the order is that of sending
      this.pending.set(kind, message);
    }
    return open ? this.sendRaw(JSON.stringify(message)) : true;
  }

  sendRaw(text) {
    if (!this.channel || this.channel.readyState !== "open") return false;
    this.channel.send(text);
    return true;
  }

  close() {
    const { pc, ws } = this;
    this.pc = this.ws = this.channel = null;
    this.session = null;
    this.pending.clear();
    if (ws) ws.close();
    if (pc) pc.close();
    if (this.video.srcObject) this.video.srcObject = null;
    if (pc || ws) this._setState("closed", "Closed by you."); // quiet if it had ended already
  }

  /** A summary of the inbound video from getStats (null before media flows). */
  async stats() {
    if (!this.pc) return null;
    const report = await this.pc.getStats();
    let inbound = null;
    let rtt = null;
    const byId = new Map();
    report.forEach((s) => {
      byId.set(s.id, s);
      if (s.type === "inbound-rtp" && s.kind === "video") inbound = s;
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) {
        rtt = s.currentRoundTripTime;
      }
    });
    if (!inbound) return null;
    const codec = byId.get(inbound.codecId);
    return {
      time: inbound.timestamp,
      framesDecoded: inbound.framesDecoded ?? 0,
      framesPerSecond: inbound.framesPerSecond ?? null,
      framesDropped: inbound.framesDropped ?? 0,
      bytesReceived: inbound.bytesReceived ?? 0,
      jitterBufferDelay: inbound.jitterBufferDelay ?? 0,
      jitterBufferEmittedCount: inbound.jitterBufferEmittedCount ?? 0,
      width: inbound.frameWidth ?? 0,
      height: inbound.frameHeight ?? 0,
      codec: codec ? codec.mimeType.replace(/^video\//, "") : "",
      rtt,
    };
  }

  // ------------------------------------------------------------ internals

  _onSignal(raw) {
    const msg = JSON.parse(raw);
    if (msg.type === "answer") {
      this.session = msg.session;
      this.worker = msg.worker ?? null; // cluster mode: where the session runs
      this.timings.answer = performance.now();
      this.pc.setRemoteDescription({ type: "answer", sdp: msg.sdp }).catch((err) =>
        this._setState("failed", `bad answer: ${err.message}`),
      );
    }
    if (msg.type === "error") this._setState("failed", msg.detail, msg);
    if (msg.type === "reconnect") {
      this._reconnect(this.ws, msg.detail).catch((err) => this._setState("failed", `cannot reconnect: ${err.message}`));
    }
    this._emit("message", msg);
  }

  _onMessage(raw) {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      return;
    }
    if (msg.type === "error" && msg.code === "generation_failed") this._setState("failed", msg.detail, msg);
    if (msg.type === "applied") {
      const kind = KINDS[msg.what];
      if (acknowledges(msg, this.pending.get(kind))) this.pending.delete(kind);
    }
    this._emit("message", msg);
  }

  /** A control channel opened: send what is not acknowledged yet (after a move). */
  _sendPending() {
    for (const message of this.pending.values()) this.sendRaw(JSON.stringify(message));
  }

  _watchFrames() {
    const video = this.video;
    if (!video.requestVideoFrameCallback) return;
    const pc = this.pc;
    const onFrame = (now, metadata) => {
      if (this.pc !== pc) return;
      if (this.timings.firstFrame === undefined) this.timings.firstFrame = now;
      this._emit("frame", { now, metadata });
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }

  // The media side noticed the end first: the signaling socket, which knows why (the
  // server stopped, or ended the session), gets a moment to say so before this reason does.
  _mediaEnded(pc, reason) {
    if (this.pc !== pc) return;
    const ws = this.ws;
    if (ws && ws.readyState !== WebSocket.CLOSED) {
      setTimeout(() => this.pc === pc && this._setState("closed", reason), 3000);
    } else {
      this._setState("closed", reason);
    }
  }

  _setState(state, reason = "", error = null) {
    if (state === this.state && !reason) return;
    if (ENDED.has(state) && ENDED.has(this.state)) return; // an ended stream has told why
    this.state = state;
    this._emit("state", { state, reason, error });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

const ENDED = new Set(["closed", "failed"]);
// Control type (and "applied" what) -> kind: the latest control of a kind is what counts.
const KINDS = { prompt: "prompt", camera: "camera", reset: "reset", pause: "pause", resume: "pause" };

/** Whether an "applied" acknowledges the control `sent`: the same what, and for a prompt
 * the same text, for a camera the same velocities (the server's are floats). */
function acknowledges(applied, sent) {
  if (!sent || sent.type !== applied.what) return false;
  const near = (a, b) => Math.abs(a - b) <= 1e-6;
  if (sent.type === "prompt") return applied.text === sent.text;
  if (sent.type === "camera") {
    return near(applied.pan[0], sent.pan[0]) && near(applied.pan[1], sent.pan[1]) && near(applied.zoom, sent.zoom);
  }
  return true; // any reset; a pause or resume
}

/** Resolves once ICE gathering is complete (the offer then carries every candidate). */
function iceGatheringDone(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", check);
    // Gathering with STUN/TURN servers can stall on one of them; go with what we have.
    setTimeout(resolve, 3000);
  });
}
