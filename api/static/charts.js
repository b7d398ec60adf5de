// Inline-SVG charts for the dashboard: bar charts and histograms, no library, no network.
// Each function returns an <svg> element (viewBox-scaled to its container) whose bars carry
// class "bar" and data-value, so tests and people can read the numbers back.
"use strict";

const Charts = (() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const WIDTH = 520;
  const HEIGHT = 260;
  const MARGIN = { top: 26, right: 16, bottom: 46, left: 52 };
  const MAX_BAR = 64;

  function el(name, attrs = {}, text = null) {
    const node = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    if (text !== null) node.textContent = text;
    return node;
  }

  // A "nice" upper bound and tick step for values up to `max` (1, 2 or 5 times a power of ten).
  function niceScale(max, ticks = 4) {
    if (!(max > 0)) return { top: 1, step: 0.25 };
    const rough = max / ticks;
    const power = Math.pow(10, Math.floor(Math.log10(rough)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough);
    return { top: Math.ceil(max / step - 1e-9) * step, step };
  }

  // A label cut to the width of its slot (about 6 px per character at the label font size).
  function fit(label, width) {
    const room = Math.floor(width / 6.2);
    return label.length <= room ? label : `${label.slice(0, Math.max(2, room - 1))}…`;
  }

  function formatTick(value) {
    if (value === 0) return "0";
    if (Math.abs(value) >= 1000) return `${(value / 1000).toFixed(value % 1000 ? 1 : 0)}k`;
    return Number.isInteger(value) ? String(value) : value.toFixed(2).replace(/0+$/, "");
  }

  function frame(kind, yLabel) {
    const svg = el("svg", {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      class: "chart",
      role: "img",
      "data-chart": kind,
      preserveAspectRatio: "xMidYMid meet",
    });
    if (yLabel) {
      const x = 14;
      const y = MARGIN.top + (HEIGHT - MARGIN.top - MARGIN.bottom) / 2;
      svg.append(
        el("text", { x, y, class: "axis-title", transform: `rotate(-90 ${x} ${y})` }, yLabel),
      );
    }
    return svg;
  }

  function yAxis(svg, scale, plotHeight, plotWidth) {
    for (let v = 0; v <= scale.top + 1e-9; v += scale.step) {
      const y = MARGIN.top + plotHeight - (v / scale.top) * plotHeight;
      svg.append(el("line", { x1: MARGIN.left, x2: MARGIN.left + plotWidth, y1: y, y2: y, class: "grid" }));
      svg.append(el("text", { x: MARGIN.left - 6, y: y + 4, class: "tick", "text-anchor": "end" }, formatTick(v)));
    }
  }

  function empty(kind, message) {
    const svg = frame(kind, "");
    svg.classList.add("empty");
    svg.append(el("text", { x: WIDTH / 2, y: HEIGHT / 2, class: "empty-text", "text-anchor": "middle" }, message));
    return svg;
  }

  // Vertical bars. options: kind, labels, values (null = no bar), yLabel, format(v) for value
  // labels, max (fixed top), reference {value, label} drawn as a dashed line, colors (per bar).
  function barChart(options) {
    const { kind, labels, values, yLabel = "", format = formatTick, reference = null } = options;
    const known = values.filter((v) => v !== null && Number.isFinite(v));
    if (known.length === 0) return empty(kind, options.emptyText || "no data yet");
    const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
    const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
    const top = Math.max(options.max || 0, ...known, reference ? reference.value : 0);
    const scale = options.max ? { top: options.max, step: options.max / 4 } : niceScale(top * 1.08);
    const svg = frame(kind, yLabel);
    yAxis(svg, scale, plotHeight, plotWidth);
    if (reference) {
      // Drawn before the bars (they cover it); its label sits in the legend row above the plot.
      const y = MARGIN.top + plotHeight - (reference.value / scale.top) * plotHeight;
      const right = MARGIN.left + plotWidth;
      svg.append(el("line", { x1: MARGIN.left, x2: right, y1: y, y2: y, class: "reference" }));
      svg.append(el("line", { x1: right - 150, x2: right - 128, y1: 10, y2: 10, class: "reference" }));
      svg.append(el("text", { x: right, y: 14, class: "reference-label", "text-anchor": "end" }, reference.label));
    }
    const slot = plotWidth / labels.length;
    const barWidth = Math.min(MAX_BAR, slot * 0.62);
    labels.forEach((label, i) => {
      const x = MARGIN.left + slot * i + (slot - barWidth) / 2;
      const value = values[i];
      const center = x + barWidth / 2;
      svg.append(el("text", { x: center, y: HEIGHT - MARGIN.bottom + 16, class: "label", "text-anchor": "middle" }, fit(label, slot)));
      if (value === null || !Number.isFinite(value)) {
        svg.append(el("text", { x: center, y: MARGIN.top + plotHeight - 6, class: "na", "text-anchor": "middle" }, "n/a"));
        return;
      }
      const h = Math.max(1, (value / scale.top) * plotHeight);
      const y = MARGIN.top + plotHeight - h;
      const color = options.colors ? options.colors[i % options.colors.length] : null;
      const bar = el("rect", { x, y, width: barWidth, height: h, rx: 2, class: "bar", "data-value": value, "data-label": label });
      if (color) bar.setAttribute("style", `fill: ${color}`);
      bar.append(el("title", {}, `${label}: ${format(value)}`));
      svg.append(bar);
      svg.append(el("text", { x: center, y: y - 4, class: "value", "text-anchor": "middle" }, format(value)));
    });
    svg.append(el("line", { x1: MARGIN.left, x2: MARGIN.left + plotWidth, y1: MARGIN.top + plotHeight, y2: MARGIN.top + plotHeight, class: "axis" }));
    return svg;
  }

  // Histogram of integer samples in at most `maxBins` equal-width bins. options: kind,
  // samples, xLabel, yLabel.
  function histogram(options) {
    const { kind, samples, xLabel = "", yLabel = "requests", maxBins = 16 } = options;
    if (samples.length === 0) return empty(kind, options.emptyText || "no results yet");
    const low = Math.min(...samples);
    const high = Math.max(...samples);
    const width = Math.max(1, Math.ceil((high - low + 1) / maxBins));
    const bins = Math.max(1, Math.ceil((high - low + 1) / width));
    const counts = new Array(bins).fill(0);
    for (const s of samples) counts[Math.floor((s - low) / width)] += 1;
    const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
    const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
    const most = Math.max(...counts);
    // Counts are whole requests: small counts get one tick per request, never 0.5.
    const scale = most <= 5 ? { top: most, step: 1 } : niceScale(most);
    const svg = frame(kind, yLabel);
    yAxis(svg, scale, plotHeight, plotWidth);
    const slot = plotWidth / bins;
    const barWidth = Math.min(MAX_BAR, slot - 2); // contiguous bins; a lone bin stays a bar
    const every = Math.ceil(bins / 8);
    counts.forEach((count, i) => {
      const from = low + i * width;
      const to = from + width - 1;
      const x = MARGIN.left + slot * i;
      const h = (count / scale.top) * plotHeight;
      const range = width === 1 ? `${from}` : `${from}–${to}`;
      const bar = el("rect", { x: x + (slot - barWidth) / 2, y: MARGIN.top + plotHeight - h, width: Math.max(1, barWidth), height: h, class: "bar", "data-value": count, "data-label": range });
      bar.append(el("title", {}, `${range} tokens: ${count} request(s)`));
      svg.append(bar);
      if (i % every === 0) {
        svg.append(el("text", { x: x + slot / 2, y: HEIGHT - MARGIN.bottom + 16, class: "label", "text-anchor": "middle" }, range));
      }
    });
    svg.append(el("line", { x1: MARGIN.left, x2: MARGIN.left + plotWidth, y1: MARGIN.top + plotHeight, y2: MARGIN.top + plotHeight, class: "axis" }));
    svg.append(el("text", { x: MARGIN.left + plotWidth / 2, y: HEIGHT - 8, class: "axis-title", "text-anchor": "middle" }, xLabel));
    return svg;
  }

  return { barChart, histogram, niceScale };
})();
