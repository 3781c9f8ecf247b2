// Bar charts as inline SVG, drawn here (no chart library): one bar per day.

const SVG = "http://www.w3.org/2000/svg";
const W = 360;
const H = 150;
const PAD = { left: 34, right: 6, top: 8, bottom: 20 };

function el(name, attrs = {}, text = null) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== null) node.textContent = text;
    return node;
}

/** A "nice" top for the axis: 1, 2 or 5 times a power of ten, at least `max`. */
function niceTop(max) {
    if (max <= 0) return 1;
    const step = 10 ** Math.floor(Math.log10(max));
    for (const m of [1, 2, 5, 10]) if (m * step >= max) return m * step;
    return 10 * step;
}

/**
 * `points`: [{label: "2026-12-06", value: 3}, ...], oldest first.
 * The SVG carries `data-total` and each bar its value in `data-value` and a <title>.
 */
export function barChart(title, points, format = String) {
    const figure = document.createElement("figure");
    figure.className = "chart";
    const heading = document.createElement("h3");
    heading.textContent = title;
    figure.append(heading);
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
    const total = points.reduce((sum, p) => sum + p.value, 0);
    svg.dataset.total = String(total);
    const top = niceTop(Math.max(0, ...points.map((p) => p.value)));
    const plotW = W - PAD.left - PAD.right;
    const plotH = H - PAD.top - PAD.bottom;
    for (const frac of [0, 0.5, 1]) {
        const y = PAD.top + plotH * (1 - frac);
        svg.append(el("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: y, y2: y }));
        svg.append(el("text", { x: PAD.left - 4, y: y + 3, "text-anchor": "end" }, format(top * frac)));
    }
    const slot = plotW / Math.max(points.length, 1);
    points.forEach((p, i) => {
        const h = (p.value / top) * plotH;
        const bar = el("rect", {
            class: "bar",
            x: PAD.left + i * slot + slot * 0.15,
            y: PAD.top + plotH - h,
            width: Math.max(slot * 0.7, 1),
            height: h,
            "data-value": p.value,
        });
        bar.append(el("title", {}, `${p.label}: ${format(p.value)}`));
        svg.append(bar);
    });
    const first = points[0];
    const last = points[points.length - 1];
    if (first) svg.append(el("text", { x: PAD.left, y: H - 5 }, first.label));
    if (last && last !== first) svg.append(el("text", { x: W - PAD.right, y: H - 5, "text-anchor": "end" }, last.label));
    figure.append(svg);
    return figure;
}

export function formatBytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
        n /= 1024;
        i += 1;
    }
    return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}
