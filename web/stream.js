// One livereel stream: WebSocket signaling, the WebRTC peer connection that carries
// the video, and the `control` data channel. No UI here; app.js listens to events.
//
// Events (CustomEvent, details in `event.detail`):
//   "state"    {state: "connecting" | "live" | "closed" | "failed", reason?}
//   "message"  a parsed server message from the data channel or the socket
//   "frame"    {now, metadata} for every presented video frame

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
  }

  /** Open a session: offer -> answer over /ws (with the server's token, if it has
   * one), then media and the control channel. */
  async connect({ prompt, seed, token } = {}) {
    this.close();
    this.timings = { start: performance.now() };
    this._setState("connecting");
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    pc.addTransceiver("video", { direction: "recvonly" });
    const channel = pc.createDataChannel("control");
    this.channel = channel;
    channel.onmessage = (e) => this._onMessage(e.data);
    channel.onclose = () => this.pc === pc && this._setState("closed", "control channel closed");
    pc.ontrack = (e) => {
      this.video.srcObject = e.streams[0] ?? new MediaStream([e.track]);
      this.video.play().catch(() => {});
      this._watchFrames();
    };
    pc.onconnectionstatechange = () => {
      if (this.pc !== pc) return;
      const s = pc.connectionState;
      if (s === "connected") this._setState("live");
      else if (s === "failed") this._setState("failed", "the media connection failed");
      else if (s === "closed" || s === "disconnected") this._setState("closed", `connection ${s}`);
    };

    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringDone(pc);
    const url = new URL("/ws", location.href);
    if (token) url.searchParams.set("token", token);
    const ws = new WebSocket(url.href.replace(/^http/, "ws"));
    this.ws = ws;
    ws.onmessage = (e) => this._onSignal(e.data);
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this._setState(this.state === "failed" ? "failed" : "closed", e.reason || "the server closed the session");
    };
    ws.onerror = () => this.ws === ws && this._setState("failed", "cannot reach the server");
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

  /** Send a control message (an object) on the data channel; false if not open. */
  send(message) {
    return this.sendRaw(JSON.stringify(message));
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
    if (ws) ws.close();
    if (pc) pc.close();
    if (this.video.srcObject) this.video.srcObject = null;
    if (pc || ws) this._setState("closed", "closed by you");
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
      this.timings.answer = performance.now();
      this.pc.setRemoteDescription({ type: "answer", sdp: msg.sdp }).catch((err) =>
        this._setState("failed", `bad answer: ${err.message}`),
      );
    }
    if (msg.type === "error") this._setState("failed", `${msg.code}: ${msg.detail}`);
    this._emit("message", msg);
  }

  _onMessage(raw) {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      return;
    }
    this._emit("message", msg);
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

  _setState(state, reason = "") {
    if (state === this.state && !reason) return;
    this.state = state;
    this._emit("state", { state, reason });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
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
