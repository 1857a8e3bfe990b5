// The chat demo: two pages meet in one swarm, then talk over a WebRTC data channel.
// The initiator offers a data channel to each peer that joins; offers, answers and ICE
// candidates travel as direct signals through the hub, and every step shows in the log.
import { Peer } from "flask-signal";

const $ = (id) => document.getElementById(id);
const hub = document.body.dataset.hub;
const room = new URLSearchParams(location.search).get("room");
const peer = new Peer(hub, room);
const links = new Map(); // remote cid -> { pc, channel }
const short = (cid) => (cid ? cid.slice(0, 6) : "?");

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status-text").textContent = text;
}

function log(direction, event, detail = "") {
  const item = document.createElement("li");
  item.className = direction === "↑" ? "out" : direction === "↓" ? "in" : "note";
  const time = new Date().toLocaleTimeString([], { hour12: false });
  item.innerHTML = `<time></time><span class="dir"></span><b></b><span class="detail"></span>`;
  item.querySelector("time").textContent = time;
  item.querySelector(".dir").textContent = direction;
  item.querySelector("b").textContent = event;
  item.querySelector(".detail").textContent = detail;
  $("log").prepend(item);
}

function addMessage(text, who, mine) {
  $("messages").querySelector(".empty")?.remove();
  const item = document.createElement("li");
  item.className = mine ? "mine" : "theirs";
  item.innerHTML = `<span class="who"></span><span class="text"></span>`;
  item.querySelector(".who").textContent = who;
  item.querySelector(".text").textContent = text;
  $("messages").append(item);
  item.scrollIntoView({ block: "nearest" });
}

function signal(data, to) {
  log("↑", data.type, `to ${to ? short(to) : "everyone"}`);
  peer.send({ ...data, from: peer.cid }, to).catch((error) => log("!", "send failed", error.message));
}

function link(cid) {
  if (links.has(cid)) return links.get(cid);
  const pc = peer.createPeerConnection();
  const entry = { pc, channel: null };
  links.set(cid, entry);
  pc.onicecandidate = ({ candidate }) => {
    if (candidate) signal({ type: "candidate", candidate: candidate.toJSON() }, cid);
  };
  pc.onconnectionstatechange = () => log("·", "webrtc", `${short(cid)}: ${pc.connectionState}`);
  pc.ondatachannel = ({ channel }) => useChannel(cid, channel);
  return entry;
}

function useChannel(cid, channel) {
  links.get(cid).channel = channel;
  channel.onopen = () => {
    log("·", "data channel", `open with ${short(cid)}`);
    setStatus("p2p", `Connected peer to peer with ${short(cid)}`);
    $("text").disabled = $("send").disabled = false;
    $("text").placeholder = "Say something";
    $("text").focus();
  };
  channel.onmessage = ({ data }) => addMessage(JSON.parse(data).text, short(cid), false);
  channel.onclose = () => log("·", "data channel", `closed with ${short(cid)}`);
}

function drop(cid) {
  const entry = links.get(cid);
  if (!entry) return;
  entry.pc.close();
  links.delete(cid);
  if (![...links.values()].some((l) => l.channel?.readyState === "open")) {
    $("text").disabled = $("send").disabled = true;
    $("text").placeholder = "Waiting for a peer…";
    setStatus("waiting", "Peer left: waiting for another one");
  }
}

log("↑", room ? "join" : "create", room ? `swarm ${short(room)}` : "a new swarm");

peer.on("connect", (data) => {
  log("↓", "connect", `I am ${short(data.cid)}${data.iceServers?.length ? `, ${data.iceServers.length} ICE server(s)` : ""}`);
  const url = new URL(location.href);
  url.search = `?room=${data.id}`;
  $("link").value = url.href;
  $("copy").disabled = false;
  if (peer.initiator) {
    setStatus("waiting", "Room open: waiting for a peer");
  } else {
    setStatus("connecting", "Joined: connecting peer to peer…");
    signal({ type: "hello" }); // a broadcast: everyone hears it, this page too
  }
});

peer.on("join", async ({ cid }) => {
  log("↓", "join", short(cid));
  setStatus("connecting", `${short(cid)} joined: connecting peer to peer…`);
  const { pc } = link(cid);
  useChannel(cid, pc.createDataChannel("chat"));
  await pc.setLocalDescription(await pc.createOffer());
  signal({ type: "offer", sdp: pc.localDescription.toJSON() }, cid);
});

peer.on("leave", ({ cid }) => {
  log("↓", "leave", short(cid));
  drop(cid);
});

// Signals are handled one after another: a candidate waits for the description before it.
let handled = Promise.resolve();
peer.on("signal", (data) => {
  handled = handled.then(() => onSignal(data)).catch((error) => log("!", "webrtc", error.message));
});

async function onSignal(data) {
  const mine = data.from === peer.cid;
  log("↓", `signal: ${data.type}`, mine ? "my own broadcast" : `from ${short(data.from)}`);
  if (mine) return;
  if (data.type === "offer") {
    const { pc } = link(data.from);
    await pc.setRemoteDescription(data.sdp);
    await pc.setLocalDescription(await pc.createAnswer());
    signal({ type: "answer", sdp: pc.localDescription.toJSON() }, data.from);
  } else if (data.type === "answer") {
    await links.get(data.from)?.pc.setRemoteDescription(data.sdp);
  } else if (data.type === "candidate") {
    await link(data.from).pc.addIceCandidate(data.candidate);
  }
}

peer.on("close", (error) => {
  log("↓", "close", error ? error.message : "closed");
  for (const cid of [...links.keys()]) drop(cid);
  const gone = error?.status === 404;
  setStatus("closed", gone ? "This room has ended: start a new one" : "The room has closed");
  if (!peer.initiator) {
    $("link").value = "";
    $("copy").textContent = "New room";
    $("copy").disabled = false;
    $("copy").onclick = () => (location.href = location.pathname);
  }
});

$("copy").onclick = async () => {
  $("link").select();
  try {
    await navigator.clipboard.writeText($("link").value);
  } catch {
    document.execCommand?.("copy");
  }
  $("copy").textContent = "Copied";
  setTimeout(() => ($("copy").textContent = "Copy"), 1500);
};

$("compose").onsubmit = (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  for (const { channel } of links.values()) {
    if (channel?.readyState === "open") channel.send(JSON.stringify({ text }));
  }
  addMessage(text, "you", true);
  $("text").value = "";
};

window.addEventListener("pagehide", () => peer.close());
window.demoPeer = peer; // for the console, and for tests
