/* IOC dashboard: polls /dashboard/api/state and draws KPI tiles, the road network with markers, and lists.
   Hand-written, no framework: the page must work on an offline control-room machine. */
"use strict";

(function () {
  const KEY_STORE = "citytwin.ioc.key";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const MAX_LIST = 12;
  // The twin's own classes (arterial, bridge, collector, local, alley) and OpenStreetMap's highway=*.
  const MAJOR = new Set(["arterial", "bridge", "expressway", "motorway", "motorway_link", "trunk", "trunk_link",
    "primary", "primary_link"]);
  const MIDDLE = new Set(["collector", "secondary", "secondary_link", "tertiary", "tertiary_link"]);

  const RISK = { on_track: "Trong hạn", at_risk: "Sắp quá hạn", breached: "Quá hạn" };
  const STATUS = {
    received: "Đã tiếp nhận", acknowledged: "Đã xác nhận", assigned: "Đã phân công",
    in_progress: "Đang xử lý", resolved: "Đã xử lý xong", closed: "Đã đóng", raised: "Mới phát sinh",
  };
  const SEVERITY = {
    informational: "Thông tin", low: "Thấp", medium: "Trung bình", high: "Cao", critical: "Nghiêm trọng",
  };
  const CATEGORY = {
    traffic: "Giao thông", environment: "Môi trường", weather: "Thời tiết", security: "An ninh trật tự",
    flood: "Ngập lụt", health: "Y tế", fire: "Cháy nổ", infrastructure: "Hạ tầng", device: "Thiết bị",
    data: "Dữ liệu", agriculture: "Nông nghiệp", other: "Khác",
  };

  const params = new URLSearchParams(window.location.search);
  const refreshS = Math.max(0.5, Number.parseFloat(params.get("refresh")) || 5);
  const apiKey = takeKey();
  let timezone = "Asia/Ho_Chi_Minh";
  let network = null; // the FeatureCollection, once loaded
  let lastState = null;
  let lastOk = 0;
  let drawnRoads = ""; // the map size the roads were last drawn for

  // The key arrives once in the URL; keep it for this tab only and take it out of the address bar
  // (and so out of history, bookmarks and screenshots).
  function takeKey() {
    const fromUrl = params.get("key");
    if (fromUrl) {
      try { sessionStorage.setItem(KEY_STORE, fromUrl); } catch (e) { /* private mode: keep in memory */ }
      params.delete("key");
      const query = params.toString();
      history.replaceState(null, "", window.location.pathname + (query ? "?" + query : "") + window.location.hash);
      return fromUrl;
    }
    try { return sessionStorage.getItem(KEY_STORE); } catch (e) { return null; }
  }

  function $(selector) { return document.querySelector(selector); }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    return node;
  }

  function showMessage(text, level) {
    const box = $("#message");
    if (!text) { box.hidden = true; box.textContent = ""; return; }
    box.hidden = false;
    box.className = "message" + (level === "warn" ? " warn" : "");
    box.textContent = text;
  }

  function setConnection(state) { $("#conn-dot").className = "dot " + state; }

  // ---- fetching --------------------------------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, detail) { super(detail || ("HTTP " + status)); this.status = status; }
  }

  async function getJson(path) {
    const response = await fetch(path, {
      headers: { "X-API-Key": apiKey, "Accept": "application/json" },
      cache: "no-store",
      credentials: "omit",
    });
    if (!response.ok) {
      let detail = "";
      try { const body = await response.json(); detail = typeof body.detail === "string" ? body.detail : ""; }
      catch (e) { /* not JSON */ }
      throw new HttpError(response.status, detail);
    }
    return response.json();
  }

  function explain(error) {
    if (error.status === 401) {
      return "Khoá API không hợp lệ, đã bị thu hồi hoặc bị thiếu (401). Mở lại trang với ?key=<khoá điều hành viên>. " +
        "· Invalid or missing API key.";
    }
    if (error.status === 403) {
      return "Khoá này không có quyền điều hành viên (403): bảng điều hành cần khoá vai trò operator hoặc admin. " +
        "· This key is not an operator key.";
    }
    if (error.status === 429) return "Quá nhiều yêu cầu (429): tạm giãn nhịp cập nhật. · Rate limited, slowing down.";
    if (error.status) return "Máy chủ trả lỗi " + error.status + (error.message ? ": " + error.message : "") + ".";
    return "Mất kết nối tới máy chủ IOC; đang thử lại… · Cannot reach the server, retrying.";
  }

  function isFatal(error) { return error.status === 401 || error.status === 403; }

  async function loadNetwork() {
    network = await getJson("/dashboard/api/network");
    const name = network.name || (network.properties && network.properties.name);
    if (typeof name === "string" && name.trim()) $("#city").textContent = name;
  }

  async function poll() {
    let delay = refreshS * 1000;
    try {
      if (network === null) await loadNetwork();
      const state = await getJson("/dashboard/api/state");
      lastState = state;
      lastOk = Date.now();
      if (state.timezone) timezone = state.timezone;
      render(state);
      showMessage("");
      setConnection("ok");
    } catch (error) {
      showMessage(explain(error), error.status === 429 || !error.status ? "warn" : "error");
      setConnection(isFatal(error) ? "down" : "stale");
      if (isFatal(error)) return; // a wrong key stays wrong: stop polling until the page is reopened
      if (error.status === 429) delay *= 4;
    }
    window.setTimeout(poll, delay);
  }

  // ---- formatting ------------------------------------------------------------------------------------

  function fmtTime(iso, withDate) {
    const date = iso instanceof Date ? iso : new Date(iso);
    if (Number.isNaN(date.getTime())) return "—";
    const opts = { hour: "2-digit", minute: "2-digit", second: withDate ? undefined : "2-digit", hour12: false };
    if (withDate) { opts.day = "2-digit"; opts.month = "2-digit"; }
    try { return date.toLocaleString("vi-VN", Object.assign({ timeZone: timezone }, opts)); }
    catch (e) { return date.toLocaleString("vi-VN", opts); }
  }

  function fmtDuration(ms) {
    const minutes = Math.round(Math.abs(ms) / 60000);
    if (minutes < 60) return minutes + " phút";
    const hours = minutes / 60;
    if (hours < 48) return decimal(hours, hours < 10 ? 1 : 0) + " giờ";
    return Math.round(hours / 24) + " ngày";
  }

  function deadlineText(iso) {
    const left = new Date(iso).getTime() - Date.now();
    if (Number.isNaN(left)) return "";
    return left >= 0 ? "còn " + fmtDuration(left) : "quá hạn " + fmtDuration(left);
  }

  // Vietnamese writes 5,3 for 5.3.
  function decimal(value, digits) {
    return value.toLocaleString("vi-VN", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }

  function label(map, key) { return map[key] || key; }

  function num(value) { return typeof value === "number" && Number.isFinite(value) ? value : null; }

  // ---- tiles -----------------------------------------------------------------------------------------

  function setTile(kpi, value, unit, tone) {
    const tile = document.querySelector('[data-kpi="' + kpi + '"]');
    const box = tile.querySelector(".value");
    box.textContent = value === null || value === undefined ? "—" : String(value);
    if (unit && value !== null && value !== undefined) box.appendChild(el("span", "unit", unit));
    tile.classList.remove("good", "warn", "bad");
    if (tone) tile.classList.add(tone);
  }

  function renderTiles(summary) {
    const req = summary.requests || {};
    const risk = req.by_risk || {};
    const alerts = summary.alerts || {};
    const breached = risk.breached || 0;
    const atRisk = risk.at_risk || 0;
    setTile("open", req.open || 0, null, null);
    setTile("breached", breached, null, breached > 0 ? "bad" : "good");
    setTile("at_risk", atRisk, null, atRisk > 0 ? "warn" : "good");
    setTile("alerts", alerts.active || 0, null, (alerts.active || 0) > 0 ? "warn" : "good");

    const cats = document.querySelector('[data-kpi="categories"] .value');
    cats.textContent = "";
    const entries = Object.entries(alerts.by_category || {}).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
    if (entries.length === 0) cats.textContent = "Không có";
    for (const [cat, n] of entries) {
      const chip = el("span", "chip", label(CATEGORY, cat) + " ");
      chip.appendChild(el("b", null, n));
      cats.appendChild(chip);
    }

    let total = 0, fresh = 0;
    for (const f of summary.freshness || []) { total += f.count || 0; fresh += f.fresh || 0; }
    const freshPct = total > 0 ? Math.round((100 * fresh) / total) : null;
    const freshTone = freshPct === null ? null : freshPct >= 90 ? "good" : freshPct >= 60 ? "warn" : "bad";
    setTile("freshness", freshPct, "%", freshTone);

    const median = num(req.median_resolution_h);
    setTile("median", median === null ? null : decimal(median, median < 10 ? 1 : 0), " h", null);
    const within = num(req.resolved_within_sla_pct);
    setTile("within_sla", within === null ? null : Math.round(within), "%",
      within === null ? null : within >= 90 ? "good" : within >= 70 ? "warn" : "bad");
  }

  // ---- map -------------------------------------------------------------------------------------------

  function lineStrings(geometry) {
    if (!geometry) return [];
    if (geometry.type === "LineString") return [geometry.coordinates];
    if (geometry.type === "MultiLineString") return geometry.coordinates;
    return [];
  }

  function roadClass(props) {
    const p = props || {};
    const cls = String(p.road_class || p.highway || "").toLowerCase();
    if (MAJOR.has(cls)) return 2;
    if (MIDDLE.has(cls)) return 1;
    if (cls) return 0; // a named minor class: local, alley, residential …
    const lanes = Number.parseFloat(p.lanes); // no class: the number of lanes says how big a road it is
    return lanes >= 3 ? 2 : lanes >= 2 ? 1 : 0;
  }

  function validPoint(lon, lat) {
    return typeof lon === "number" && typeof lat === "number" && Number.isFinite(lon) && Number.isFinite(lat);
  }

  // Equirectangular projection scaled by cos(mid latitude), fitted to the map box with a margin.
  function makeProjection(width, height) {
    let minLon = Infinity, maxLon = -Infinity, minLat = Infinity, maxLat = -Infinity;
    const extend = (lon, lat) => {
      if (!validPoint(lon, lat)) return;
      minLon = Math.min(minLon, lon); maxLon = Math.max(maxLon, lon);
      minLat = Math.min(minLat, lat); maxLat = Math.max(maxLat, lat);
    };
    for (const feature of (network && network.features) || []) {
      for (const line of lineStrings(feature.geometry)) for (const c of line) extend(c[0], c[1]);
    }
    if (minLon === Infinity && lastState) { // no road network: fit to what there is to show
      for (const item of lastState.requests.concat(lastState.alerts)) extend(item.lon, item.lat);
    }
    if (minLon === Infinity) return null;
    const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
    const spanX = Math.max((maxLon - minLon) * k, 1e-4);
    const spanY = Math.max(maxLat - minLat, 1e-4);
    const pad = 24;
    const scale = Math.min((width - 2 * pad) / spanX, (height - 2 * pad) / spanY);
    const midLon = (minLon + maxLon) / 2, midLat = (minLat + maxLat) / 2;
    return (lon, lat) => [width / 2 + (lon - midLon) * k * scale, height / 2 - (lat - midLat) * scale];
  }

  function mapSize() {
    const box = $("#map").getBoundingClientRect();
    return [Math.max(1, Math.round(box.width)), Math.max(1, Math.round(box.height))];
  }

  function renderMap() {
    const [width, height] = mapSize();
    const root = $("#map-svg");
    root.setAttribute("viewBox", "0 0 " + width + " " + height);
    const project = makeProjection(width, height);
    $("#map-empty").hidden = project !== null;
    // Roads only change with the map's size: redrawing thousands of links every poll would be waste.
    const roadsKey = width + "x" + height;
    if (roadsKey !== drawnRoads) {
      drawRoads(project);
      drawnRoads = project && network && network.features && network.features.length ? roadsKey : "";
    }
    drawMarkers(project);
  }

  function drawRoads(project) {
    const layer = $("#roads");
    layer.textContent = "";
    if (!project || !network) return;
    // One path per road class: thousands of links stay cheap to draw and to redraw on resize.
    const parts = [[], [], []];
    for (const feature of network.features || []) {
      const cls = roadClass(feature.properties);
      for (const line of lineStrings(feature.geometry)) {
        let d = "";
        for (const c of line) {
          if (!validPoint(c[0], c[1])) continue;
          const [x, y] = project(c[0], c[1]);
          d += (d ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
        }
        if (d) parts[cls].push(d);
      }
    }
    parts.forEach((ds, cls) => {
      if (ds.length) layer.appendChild(svg("path", { class: "road c" + cls, d: ds.join(" ") }));
    });
  }

  function titled(node, text) {
    const title = svg("title");
    title.textContent = text;
    node.appendChild(title);
    return node;
  }

  function drawMarkers(project) {
    const reqLayer = $("#request-markers");
    const alertLayer = $("#alert-markers");
    reqLayer.textContent = "";
    alertLayer.textContent = "";
    if (!project || !lastState) return;
    // Least urgent first so the breached ones are drawn on top.
    for (const r of lastState.requests.slice().reverse()) {
      if (!validPoint(r.lon, r.lat)) continue;
      const [x, y] = project(r.lon, r.lat);
      const dot = svg("circle", {
        cx: x.toFixed(1), cy: y.toFixed(1), r: r.risk === "breached" ? 8 : 7,
        class: "marker request " + r.risk, "data-request-id": r.id, tabindex: 0,
      });
      reqLayer.appendChild(titled(dot, "#" + r.id + " " + r.service_name + " — " + label(RISK, r.risk) +
        " (" + deadlineText(r.deadline) + ") · " + label(STATUS, r.status)));
    }
    for (const a of lastState.alerts.slice().reverse()) {
      if (!validPoint(a.lon, a.lat)) continue;
      const [x, y] = project(a.lon, a.lat);
      const s = a.severity === "critical" || a.severity === "high" ? 12 : 10;
      const points = [[x, y - s], [x + s * 0.9, y + s * 0.6], [x - s * 0.9, y + s * 0.6]]
        .map((p) => p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" ");
      const tri = svg("polygon", {
        points, class: "marker alert sev-" + a.severity + " " + a.status, "data-alert-id": a.id, tabindex: 0,
      });
      alertLayer.appendChild(titled(tri, "⚠ " + label(SEVERITY, a.severity) + " · " + label(CATEGORY, a.category) +
        ": " + a.message + " (" + fmtTime(a.raised_at, true) + ")"));
    }
  }

  // ---- lists -----------------------------------------------------------------------------------------

  function renderLists(state) {
    const urgent = $("#urgent");
    urgent.textContent = "";
    $("#requests-count").textContent = state.requests.length ? "(" + state.requests.length + ")" : "";
    if (state.requests.length === 0) urgent.appendChild(el("li", "empty", "Không có yêu cầu đang mở"));
    for (const r of state.requests.slice(0, MAX_LIST)) {
      const li = el("li", r.risk);
      li.dataset.requestId = r.id;
      const row1 = el("div", "row1");
      row1.appendChild(el("span", null, "#" + r.id + " " + r.service_name));
      row1.appendChild(el("span", "badge " + r.risk, label(RISK, r.risk)));
      const row2 = el("div", "row2");
      row2.appendChild(el("span", null, label(STATUS, r.status)));
      row2.appendChild(el("span", null, deadlineText(r.deadline)));
      li.append(row1, row2);
      urgent.appendChild(li);
    }

    const alerts = $("#latest-alerts");
    alerts.textContent = "";
    $("#alerts-count").textContent = state.alerts.length ? "(" + state.alerts.length + ")" : "";
    if (state.alerts.length === 0) alerts.appendChild(el("li", "empty", "Không có cảnh báo"));
    for (const a of state.alerts.slice(0, MAX_LIST)) {
      const li = el("li", "sev-" + a.severity);
      li.dataset.alertId = a.id;
      const row1 = el("div", "row1");
      row1.appendChild(el("span", null, a.message || a.kind));
      row1.appendChild(el("span", "badge sev-" + a.severity, label(SEVERITY, a.severity)));
      const row2 = el("div", "row2");
      row2.appendChild(el("span", null, label(CATEGORY, a.category) + " · " + label(STATUS, a.status)));
      row2.appendChild(el("span", null, fmtTime(a.raised_at, true)));
      li.append(row1, row2);
      alerts.appendChild(li);
    }
  }

  function render(state) {
    renderTiles(state.summary || {});
    renderMap();
    renderLists(state);
    const updated = $("#updated");
    updated.textContent = fmtTime(new Date(lastOk), false);
    updated.setAttribute("datetime", new Date(lastOk).toISOString());
  }

  // The clock turns amber when updates stop arriving, so a frozen screen is never taken for a calm city.
  function watchStaleness() {
    if (lastOk && Date.now() - lastOk > Math.max(3 * refreshS * 1000, 15000)) setConnection("stale");
  }

  // ---- start -----------------------------------------------------------------------------------------

  $("#refresh-note").textContent = "(mỗi " + refreshS + " giây)";
  if (!apiKey) {
    showMessage("Cần khoá API của điều hành viên: mở trang với /dashboard?key=<khoá>. " +
      "· An operator API key is needed: open /dashboard?key=<key>.");
    setConnection("down");
    return;
  }
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    window.clearTimeout(resizeTimer);
    resizeTimer = window.setTimeout(renderMap, 100);
  });
  window.setInterval(watchStaleness, 1000);
  poll();
})();
