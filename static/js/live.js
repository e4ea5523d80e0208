// Say so while a live connection is down. htmx's WebSocket extension
// reconnects by itself (with jittered backoff); this only marks the page.
document.addEventListener("htmx:wsClose", (event) => {
  event.target.closest(".live")?.classList.add("offline");
});
document.addEventListener("htmx:wsOpen", (event) => {
  event.target.closest(".live")?.classList.remove("offline");
});
