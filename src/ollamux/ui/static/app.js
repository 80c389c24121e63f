// The dashboard's behaviour: one Alpine component ("dash") that fetches the admin API and the model APIs.
// Alpine does the DOM, uPlot the charts, eventsource-parser the SSE; what is left here is fetching,
// following streams and formatting. Every fetch carries the admin key (sessionStorage, Bearer header): no
// cookies, and so no EventSource either (it cannot send a header): streams are read with fetch().
import { createParser } from "./vendor/eventsource-parser/index.js";

const KEY = "ollamux.adminKey";
const TABS = [
  { id: "overview", label: "Overview" },
  { id: "requests", label: "Requests" },
  { id: "models", label: "Models" },
  { id: "backends", label: "Backends" },
  { id: "playground", label: "Playground" },
];

// ------------------------------------------------------------------------------------------ formatting
const num = (v) => (v === null || v === undefined ? "-" : Number(v).toLocaleString());
const dec = (v) => (v === null || v === undefined ? "-" : Number(v).toFixed(1));
const ms = (v) =>
  v === null || v === undefined ? "-" : v >= 10000 ? `${(v / 1000).toFixed(1)} s` : `${Math.round(v)} ms`;
const pct = (v) => (v === null || v === undefined ? "-" : `${(v * 100).toFixed(1)}%`);
function duration(s) {
  if (s === null || s === undefined) return "-";
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${Math.floor(s % 60)}s`;
}

// The overview, one line an item: a new card or chart is one more entry here, index.html draws them all.
// Cards: a label and what it shows of /admin/overview's answer (d).
const CARDS = [
  { label: "requests", value: (d) => num(d.totals?.requests) },
  { label: "errors", value: (d) => pct(d.totals?.error_rate) },
  { label: "p50 / p95", value: (d) => `${ms(d.totals?.p50_ms)} / ${ms(d.totals?.p95_ms)}` },
  { label: "TTFT p50", value: (d) => ms(d.totals?.ttft_p50_ms) },
  { label: "tokens in / out", value: (d) => `${num(d.totals?.prompt_tokens)} / ${num(d.totals?.completion_tokens)}` },
  { label: "in flight", id: "in-flight", value: (d) => num(d.live?.in_flight) },
  { label: "uptime", value: (d) => duration(d.live?.uptime_s) },
];
// Charts (uPlot): a title, the unit of its values, and its lines as [key of the answer's series, legend
// label]; `scale` multiplies what is drawn (a rate drawn in %).
const CHARTS = [
  { id: "rps", title: "Requests", unit: "per second", series: [["rps", "req/s"]] },
  { id: "errors", title: "Error rate", unit: "%", series: [["error_rate", "errors %"]], scale: 100 },
  { id: "latency", title: "Latency", unit: "ms", series: [["p50_ms", "p50"], ["p95_ms", "p95"]] },
  { id: "ttft", title: "Time to first token p50", unit: "ms", series: [["ttft_p50_ms", "p50"]] },
  { id: "tps", title: "Tokens", unit: "per second", series: [["tokens_per_s", "tok/s"]] },
];
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706"];
const MAX_ROWS = 500; // the requests table keeps the newest ones
const FIRST_ROWS = 200; // rows the requests table starts with, before the live stream adds the new ones
const MAX_LOG = 200_000; // characters of a model's log kept in the page
// How often each tab's data is fetched while it is shown, in ticks of one second. The requests tab follows
// a stream instead: its 1 is the poll that stands in where the stream cannot be opened (followRequests).
const EVERY = { overview: 5, requests: 1, models: 3, backends: 3, playground: 0 };

// Outside Alpine's reactive state: uPlot instances and stream controllers must not be wrapped in proxies.
// The charts are on window for the browser tests, which read the data each one was given.
const charts = (window.ollamuxCharts = {});
const streams = { log: null, chat: null, pull: null, requests: null };

class AuthError extends Error {}
class HttpError extends Error {} // the server (or a proxy in front) answered, and not 2xx

const sleep = (millis) => new Promise((resolve) => setTimeout(resolve, millis));

async function errorText(r) {
  const text = await r.text();
  try {
    const e = JSON.parse(text).error;
    return typeof e === "string" ? e : e.message;
  } catch {
    return text || `${r.status} ${r.statusText}`;
  }
}

function dash() {
  return {
    TABS,
    CARDS,
    CHARTS,
    tab: "overview",
    key: sessionStorage.getItem(KEY) || "",
    keyInput: "",
    checked: false, // whoami answered
    authed: false,
    authError: "",
    error: "",
    info: {},
    ticks: 0,
    busy: {},
    ov: { window: 3600, model: "", backend: "", data: {} },
    // gen: bumped when the filters change or the tab is left, so an answer to a query made before (and
    // the stream opened for it) is dropped, not merged. live: the stream's state, shown beside the filters
    rq: { model: "", status: "", api: "", since: "", until: "", rows: [], lastSeq: null, detail: null, gen: 0,
          live: "" },
    md: { models: [], pullName: "", pullStatus: "", pullTotal: 0, pullDone: 0, pulling: false,
          logModel: "", logText: "", logLive: false },
    bk: { backends: [] },
    pg: { models: [], model: "", input: "", messages: [], streaming: false },

    init() {
      const route = () => {
        const t = location.hash.slice(1);
        this.tab = TABS.some((x) => x.id === t) ? t : "overview";
        if (this.tab !== "requests") this.closeRequests(); // a hidden table follows no stream
        window.scrollTo(0, 0); // a new tab starts at its top, not where the last one was scrolled to
        if (this.authed) this.refresh(true);
      };
      window.addEventListener("hashchange", route);
      route();
      setInterval(() => this.tick(), 1000);
      this.checkAuth();
    },

    // ------------------------------------------------------------------------------------ auth
    async api(path, opts = {}) {
      const headers = { ...(opts.headers || {}) };
      if (this.key) headers.Authorization = `Bearer ${this.key}`;
      if (opts.json !== undefined) {
        headers["Content-Type"] = "application/json";
        opts = { ...opts, body: JSON.stringify(opts.json) };
      }
      const r = await fetch(path, { ...opts, headers });
      if (r.status === 401 || r.status === 403) {
        const msg = await errorText(r);
        this.lock(msg);
        throw new AuthError(msg);
      }
      if (!r.ok) throw new HttpError(await errorText(r));
      return r;
    },

    async checkAuth() {
      try {
        const r = await fetch("admin/whoami", { headers: this.key ? { Authorization: `Bearer ${this.key}` } : {} });
        this.info = r.ok ? await r.json() : {};
        if (!r.ok) throw new Error(await errorText(r));
        if (this.info.auth && !this.info.admin) {
          // ask a protected endpoint why: the server's own message (no key, unknown key, not an admin key)
          this.checked = true;
          this.lock(this.key ? await this.refusal() : "");
          return;
        }
        this.authed = true;
        this.authError = "";
        this.refresh(true);
      } catch (e) {
        this.authError = `cannot reach the admin API: ${e.message}`;
      }
      this.checked = true;
    },

    async refusal() {
      const r = await fetch("admin/overview", { headers: { Authorization: `Bearer ${this.key}` } });
      return r.ok ? "" : await errorText(r);
    },

    // Refused: forget every datum shown (the x-if drops the DOM, this drops the data) and ask for a key.
    lock(message) {
      this.authed = false;
      this.authError = message;
      this.info = { auth: true };
      this.ov.data = {};
      this.closeRequests();
      this.rq.rows = [];
      this.rq.detail = null;
      this.md.models = [];
      this.bk.backends = [];
      this.pg.models = [];
      this.pg.messages = [];
      for (const k of Object.keys(streams)) streams[k]?.abort();
      for (const id of Object.keys(charts)) {
        charts[id].destroy();
        delete charts[id];
      }
    },

    login() {
      this.key = this.keyInput.trim();
      this.keyInput = "";
      sessionStorage.setItem(KEY, this.key);
      this.checkAuth();
    },

    forget() {
      sessionStorage.removeItem(KEY);
      this.key = "";
      this.lock("");
      this.checkAuth();
    },

    // --------------------------------------------------------------------------------- polling
    tick() {
      if (!this.authed) return;
      this.ticks += 1;
      // the requests tab's stream brings its rows; its poll runs only where the stream could not be opened
      const every = this.tab === "requests" && this.rq.live !== "polling" ? 0 : EVERY[this.tab];
      if (every && this.ticks % every === 0) this.refresh(false);
    },

    async refresh(first) {
      const load = {
        overview: () => Promise.all([this.loadOverview(), first && this.loadModels(), first && this.loadBackends()]),
        requests: () => Promise.all([first ? this.openRequests() : this.pollRequests(), first && this.loadModels()]),
        models: () => this.loadModels(),
        backends: () => this.loadBackends(),
        playground: () => first && this.loadChatModels(),
      }[this.tab];
      if (this.busy[this.tab]) return; // a slow answer is not asked for again on top of itself
      this.busy[this.tab] = true;
      try {
        await load();
        this.error = "";
      } catch (e) {
        if (!(e instanceof AuthError)) this.error = e.message;
      } finally {
        this.busy[this.tab] = false;
      }
    },

    query(params) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
      const s = q.toString();
      return s ? `?${s}` : "";
    },

    // -------------------------------------------------------------------------------- overview
    async loadOverview() {
      const q = this.query({ window: this.ov.window, model: this.ov.model, backend: this.ov.backend });
      this.ov.data = await (await this.api(`admin/overview${q}`)).json();
      for (const c of CHARTS) charts[c.id]?.setData(this.chartData(c));
    },

    chartData(c) {
      const s = this.ov.data.series || { t: [] };
      const scaled = (xs) => (xs || []).map((v) => (v === null || c.scale === undefined ? v : v * c.scale));
      return [s.t || [], ...c.series.map(([field]) => scaled(s[field]))];
    },

    mountChart(el, c) {
      const opts = {
        width: Math.max(el.clientWidth, 280),
        height: 170,
        scales: { x: { time: true } },
        series: [{}, ...c.series.map(([, label], i) => ({
          label, stroke: COLORS[i], width: 2, points: { show: true, size: 4 },
        }))],
        axes: [{}, { size: 56 }],
        legend: { live: false },
      };
      charts[c.id] = new uPlot(opts, this.chartData(c), el);
      // a chart follows its box's width (a phone turned, the window resized, its tab shown again)
      new ResizeObserver(() => {
        if (el.clientWidth > 0) charts[c.id]?.setSize({ width: el.clientWidth, height: 170 });
      }).observe(el);
    },

    modelNames() {
      return [...new Set(this.md.models.map((m) => m.name))];
    },

    backendNames() {
      return [...new Set(this.md.models.map((m) => m.backend).filter(Boolean))];
    },

    // -------------------------------------------------------------------------------- requests
    // The table: the newest rows (one GET), then each row written since, as the server writes it, over
    // /admin/requests/stream. A dropped stream is reopened (after a pause that grows) from the last seq
    // seen, and the server sends what was written meanwhile first: no row is lost, none comes twice.
    resetRequests() {
      this.act(() => this.openRequests());
    },

    rqQuery(extra) {
      const { model, status, api, since, until } = this.rq;
      return this.query({ model, status, api, since, until, ...extra });
    },

    async openRequests() {
      this.closeRequests();
      const gen = this.rq.gen;
      this.rq.rows = [];
      this.rq.lastSeq = null;
      this.rq.detail = null;
      const page = await (await this.api(`admin/requests${this.rqQuery({ limit: FIRST_ROWS })}`)).json();
      if (gen !== this.rq.gen) return; // the filters changed while this was asked: its rows are not theirs
      this.rq.lastSeq = page.last_seq;
      this.addRows(page.rows);
      this.followRequests(gen);
    },

    closeRequests() {
      this.rq.gen += 1;
      streams.requests?.abort();
      streams.requests = null;
      this.rq.live = "";
    },

    async followRequests(gen) {
      const current = () => gen === this.rq.gen && this.authed;
      let drops = 0;
      while (current()) {
        const ctrl = (streams.requests = new AbortController());
        let opened = 0;
        this.rq.live = drops ? "reconnecting" : "connecting";
        try {
          const r = await this.api(`admin/requests/stream${this.rqQuery({ after: this.rq.lastSeq })}`, {
            signal: ctrl.signal,
          });
          if (!(r.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
            ctrl.abort();
            throw new HttpError(`/admin/requests/stream answered ${r.headers.get("Content-Type")}`);
          }
          opened = Date.now();
          this.rq.live = "live";
          if (drops) this.error = ""; // what the last stream said before it ended (an error event) is over
          const parser = createParser({ onEvent: (ev) => this.requestEvent(ev, gen) });
          await readText(r, (t) => parser.feed(t));
        } catch (e) {
          if (e.name === "AbortError" || e instanceof AuthError) return; // closed here, or the key was refused
          if (!opened && !drops && e instanceof HttpError) {
            // The stream cannot be opened at all (the rows' GET just worked, so the server is there: a proxy
            // in front that does not pass it?): fall back to polling ?after= every second (tick -> refresh).
            if (current()) this.rq.live = "polling";
            return;
          }
        }
        if (!current()) return;
        // Dropped: the server stopped, a proxy cut it, the network went. A stream that had lived a while
        // starts the pauses over; one that keeps failing waits longer each time (0.5 s doubling to 15 s).
        drops = opened && Date.now() - opened > 10_000 ? 1 : drops + 1;
        this.rq.live = "reconnecting";
        await sleep(Math.min(15_000, 500 * 2 ** (drops - 1)));
      }
    },

    requestEvent(ev, gen) {
      if (gen !== this.rq.gen) return;
      if (ev.event === "error") {
        this.error = JSON.parse(ev.data).error.message; // the server could not read the log: it ends the stream
        return;
      }
      if (ev.event !== "request") return;
      const row = JSON.parse(ev.data);
      this.rq.lastSeq = Math.max(this.rq.lastSeq ?? 0, row.seq);
      this.addRows([row]);
    },

    // Only while the stream cannot be opened (rq.live "polling"): the rows written after the last seen.
    async pollRequests() {
      if (this.rq.live !== "polling") return;
      const gen = this.rq.gen;
      const q = this.rqQuery({ after: this.rq.lastSeq, limit: FIRST_ROWS });
      const page = await (await this.api(`admin/requests${q}`)).json();
      if (gen !== this.rq.gen) return;
      if (page.last_seq !== null && page.last_seq !== undefined) this.rq.lastSeq = page.last_seq;
      this.addRows(page.rows);
    },

    addRows(rows) {
      const seen = new Set(this.rq.rows.map((r) => r.seq));
      const fresh = rows.filter((r) => !seen.has(r.seq));
      if (!fresh.length) return;
      this.rq.rows = [...fresh, ...this.rq.rows].sort((a, b) => b.seq - a.seq).slice(0, MAX_ROWS);
    },

    async openRequest(row) {
      try {
        this.rq.detail = await (await this.api(`admin/requests/${encodeURIComponent(row.id)}`)).json();
      } catch (e) {
        if (!(e instanceof AuthError)) this.error = e.message;
      }
    },

    detailFields() {
      const d = this.rq.detail;
      if (!d) return [];
      const f = (k, v) => [k, v === null || v === undefined || v === "" ? "-" : String(v)];
      return [
        f("id", d.id), f("time", new Date(d.ts * 1000).toLocaleString()), f("api", d.api),
        f("route", `${d.method} ${d.route}`), f("model asked", d.model_requested), f("model served", d.model_served),
        f("backend", d.backend), f("upstream", d.upstream_url), f("status", d.status),
        f("streamed", d.streamed ? "yes" : "no"), f("abandoned", d.abandoned ? "yes" : "no"),
        f("latency", this.ms(d.latency_ms)), f("time to first token", this.ms(d.ttft_ms)),
        f("prompt tokens", d.prompt_tokens), f("completion tokens", d.completion_tokens),
        f("tokens/s", this.dec(d.tokens_per_s)), f("key", d.key_name), f("client", d.client), f("error", d.error),
      ];
    },

    // ---------------------------------------------------------------------------------- models
    async loadModels() {
      this.md.models = (await (await this.api("admin/models")).json()).models;
    },

    async modelAction(m, action) {
      await this.act(async () => {
        await this.api(`admin/models/${encodeURIComponent(m.name)}/${action}`, { method: "POST" });
        await this.loadModels();
      });
    },

    async copyModel(m) {
      const destination = prompt(`Copy ${m.name} to the name:`);
      if (!destination) return;
      await this.act(async () => {
        await this.api("api/copy", { method: "POST", json: { source: m.name, destination } });
        await this.loadModels();
      });
    },

    async deleteModel(m) {
      if (!confirm(`Delete ${m.name}?`)) return;
      await this.act(async () => {
        await this.api("api/delete", { method: "DELETE", json: { model: m.name } });
        await this.loadModels();
      });
    },

    async act(fn) {
      try {
        await fn();
        this.error = "";
      } catch (e) {
        if (!(e instanceof AuthError)) this.error = e.message;
      }
    },

    // POST /api/pull streams NDJSON progress lines: {status, total, completed}, then {status: "success"}.
    async pull() {
      this.md.pulling = true;
      this.md.pullStatus = "starting";
      streams.pull = new AbortController();
      try {
        const r = await this.api("api/pull", {
          method: "POST", json: { model: this.md.pullName.trim(), stream: true }, signal: streams.pull.signal,
        });
        await readLines(r, (line) => {
          const p = JSON.parse(line);
          if (p.error) throw new Error(p.error);
          this.md.pullStatus = p.status;
          this.md.pullTotal = p.total || 0;
          this.md.pullDone = p.completed || 0;
        });
        await this.loadModels();
      } catch (e) {
        if (!(e instanceof AuthError)) this.md.pullStatus = `failed: ${e.message}`;
      } finally {
        this.md.pulling = false;
        this.md.pullTotal = 0;
      }
    },

    async openLog(m) {
      this.closeLog();
      this.md.logModel = m.name;
      this.md.logText = "";
      streams.log = new AbortController();
      try {
        const q = this.query({ follow: 1, tail: 200 });
        const r = await this.api(`admin/models/${encodeURIComponent(m.name)}/logs${q}`, { signal: streams.log.signal });
        this.md.logLive = true;
        await readText(r, (text) => {
          this.md.logText = (this.md.logText + text).slice(-MAX_LOG);
          this.$nextTick(() => { if (this.$refs.log) this.$refs.log.scrollTop = this.$refs.log.scrollHeight; });
        });
      } catch (e) {
        if (e.name !== "AbortError" && !(e instanceof AuthError)) this.md.logText += `\n[${e.message}]`;
      } finally {
        this.md.logLive = false;
      }
    },

    closeLog() {
      streams.log?.abort();
      this.md.logModel = "";
    },

    // -------------------------------------------------------------------------------- backends
    async loadBackends() {
      this.bk.backends = (await (await this.api("admin/backends")).json()).backends;
    },

    // ------------------------------------------------------------------------------ playground
    async loadChatModels() {
      const data = (await (await this.api("v1/models")).json()).data;
      this.pg.models = data.map((m) => m.id);
      if (!this.pg.models.includes(this.pg.model)) this.pg.model = this.pg.models[0] || "";
    },

    // Through ollamux's own OpenAI API, as any client would: the reply grows as the deltas arrive.
    async send() {
      const text = this.pg.input.trim();
      if (!text || !this.pg.model || this.pg.streaming) return;
      this.pg.input = "";
      this.pg.messages.push({ role: "user", content: text });
      const history = this.pg.messages.map(({ role, content }) => ({ role, content }));
      this.pg.messages.push({ role: "assistant", content: "" });
      const reply = this.pg.messages[this.pg.messages.length - 1];
      this.pg.streaming = true;
      streams.chat = new AbortController();
      try {
        const r = await this.api("v1/chat/completions", {
          method: "POST", json: { model: this.pg.model, messages: history, stream: true }, signal: streams.chat.signal,
        });
        const parser = createParser({
          onEvent: (ev) => {
            if (ev.data === "[DONE]") return;
            const chunk = JSON.parse(ev.data);
            if (chunk.error) throw new Error(chunk.error.message || String(chunk.error));
            reply.content += chunk.choices?.[0]?.delta?.content || "";
          },
        });
        await readText(r, (t) => parser.feed(t));
      } catch (e) {
        if (e.name === "AbortError") reply.content += " [stopped]";
        else if (!(e instanceof AuthError)) reply.content += ` [error: ${e.message}]`;
      } finally {
        this.pg.streaming = false;
      }
    },

    stop() {
      streams.chat?.abort();
    },

    // ------------------------------------------------------------------------------ formatting
    num,
    dec,
    ms,
    pct,
    duration,
    clock: (ts) => new Date(ts * 1000).toLocaleTimeString(),
    bytes(v) {
      if (!v) return "-";
      const units = ["B", "KB", "MB", "GB", "TB"];
      const i = Math.min(Math.floor(Math.log(v) / Math.log(1024)), units.length - 1);
      return `${(v / 1024 ** i).toFixed(i ? 1 : 0)} ${units[i]}`;
    },
    until(ts, pinned) {
      if (pinned) return "pinned";
      if (!ts) return "-";
      return `in ${this.duration(Math.max(0, ts - Date.now() / 1000))}`;
    },
    health: (r) => (r.up === true ? "up" : r.up === false ? "down" : "unknown"),
    stateOf: (m) => [m.state, m.loading_stage, m.error].filter(Boolean).join(": "),
  };
}

// A response body as text, chunk by chunk, as it arrives (a model's log, an SSE stream).
async function readText(response, onText) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    onText(decoder.decode(value, { stream: true }));
  }
  const rest = decoder.decode();
  if (rest) onText(rest);
}

// A response body as lines (NDJSON), each whole.
async function readLines(response, onLine) {
  let buf = "";
  await readText(response, (text) => {
    buf += text;
    const lines = buf.split("\n");
    buf = lines.pop();
    for (const l of lines) if (l.trim()) onLine(l);
  });
  if (buf.trim()) onLine(buf);
}

document.addEventListener("alpine:init", () => window.Alpine.data("dash", dash));
