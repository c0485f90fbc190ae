// The review page's behaviour: flags on the released images, the rounds chart, and the job's live progress.
// No inline script anywhere (Content-Security-Policy: script-src 'self').
"use strict";

function setUpFlags() {
  const form = document.getElementById("feedback-form");
  if (!form) return;
  const note = document.getElementById("flag-note");
  const refusing = [document.getElementById("answer-accept"), document.getElementById("answer-less")];
  const buttons = Array.from(form.querySelectorAll("button.flag"));
  function update() {
    const flagged = buttons.filter((b) => b.getAttribute("aria-pressed") === "true").length;
    // flagging asks for more privacy: the API refuses flags with Accept or Less privacy
    refusing.forEach((b) => { if (b) b.disabled = flagged > 0; });
    note.textContent = flagged === 0 ? "No image flagged."
      : `${flagged} image${flagged === 1 ? "" : "s"} flagged: send them with “More privacy”.`;
  }
  buttons.forEach((button) => {
    const input = button.parentElement.querySelector("input.flag-input");
    button.addEventListener("click", () => {
      const pressed = button.getAttribute("aria-pressed") !== "true";
      button.setAttribute("aria-pressed", String(pressed));
      button.querySelector(".flag-state").textContent = pressed ? "Flagged" : "Flag";
      input.checked = pressed;
      update();
    });
  });
  update();
}

function setUpChart() {
  const canvas = document.getElementById("rounds-chart");
  if (!canvas || typeof Chart === "undefined") return;
  const rows = Array.from(document.querySelectorAll("#rounds-table tbody tr"));
  const number = (v) => (v === "" ? null : Number(v));
  /* global Chart */
  new Chart(canvas, {
    type: "line",
    data: {
      labels: rows.map((r) => `Round ${r.dataset.round}`),
      datasets: [
        { label: "Intensity", data: rows.map((r) => number(r.dataset.intensity)), yAxisID: "share",
          borderColor: "#0b4f9c", backgroundColor: "#0b4f9c" },
        { label: "Re-identification", data: rows.map((r) => number(r.dataset.reid)), yAxisID: "share",
          borderColor: "#a1260d", backgroundColor: "#a1260d", borderDash: [6, 3] },
        { label: "ε of the round", data: rows.map((r) => number(r.dataset.epsilon)), yAxisID: "epsilon",
          borderColor: "#1d6b2f", backgroundColor: "#1d6b2f", borderDash: [2, 2] },
      ],
    },
    options: {
      animation: false, maintainAspectRatio: false,
      scales: {
        share: { type: "linear", position: "left", min: 0, max: 1, title: { display: true, text: "intensity, re-identification" } },
        epsilon: { type: "linear", position: "right", beginAtZero: true, grid: { drawOnChartArea: false },
                   title: { display: true, text: "ε" } },
      },
    },
  });
}

function setUpLive() {
  const live = document.getElementById("live");
  if (!live) return;
  const url = live.dataset.statusUrl;
  const view = live.dataset.view;
  const stage = document.getElementById("job-stage");
  const state = document.getElementById("job-state");
  const bar = document.getElementById("job-progress");
  const label = document.getElementById("progress-label");
  async function poll() {
    let status;
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
      if (response.status === 401) { window.location.assign("/signin"); return; }
      if (!response.ok) { setTimeout(poll, 3000); return; }
      status = await response.json();
    } catch (e) {
      setTimeout(poll, 3000);
      return;
    }
    if (status.view !== view) { window.location.reload(); return; }  // a new round, or the job moved on
    if (stage) stage.textContent = status.stage || "—";
    if (state) state.textContent = status.state;
    if (bar) {
      if (status.total > 0) { bar.max = status.total; bar.value = status.done; } else { bar.removeAttribute("value"); }
    }
    if (label) {
      label.textContent = (status.stage || status.state) +
        (status.total > 0 ? `: ${status.done} of ${status.total} ${status.unit}` : "");
    }
    setTimeout(poll, 1500);
  }
  setTimeout(poll, 1500);
}

document.addEventListener("DOMContentLoaded", () => {
  setUpFlags();
  setUpChart();
  setUpLive();
});
