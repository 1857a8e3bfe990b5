// The live demo: follow the app's channels; the browser resumes after any drop.
import { subscribe } from "flask-signal";

const $ = (id) => document.getElementById(id);
const channels = document.querySelector("script[data-channels]").dataset.channels;
const feed = subscribe(document.body.dataset.hub, channels.split(","));

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status-text").textContent = text;
}

feed.on("open", () => setStatus("p2p", "Live"));
feed.on("reconnect", () => setStatus("connecting", "Reconnecting…"));
feed.on("close", () => setStatus("closed", "Stopped"));

feed.on("tick", (data) => {
  $("time").textContent = new Date(data.time * 1000).toLocaleTimeString([], { hour12: false });
  $("streams").textContent = data.streams;
  $("swarms").textContent = data.swarms;
  $("last-id").textContent = feed.lastEventId;
});

feed.on("note", (data) => {
  $("notes").querySelector(".empty")?.remove();
  const item = document.createElement("li");
  item.className = "theirs";
  item.innerHTML = `<span class="who"></span><span class="text"></span>`;
  item.querySelector(".who").textContent = new Date(data.time * 1000).toLocaleTimeString([], { hour12: false });
  item.querySelector(".text").textContent = data.text;
  $("notes").prepend(item);
  $("last-id").textContent = feed.lastEventId;
});

$("note-form").onsubmit = async (event) => {
  event.preventDefault();
  const text = $("note").value.trim();
  if (!text) return;
  $("note").value = "";
  await fetch("live/notes", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ text }),
  });
};

window.demoFeed = feed;
