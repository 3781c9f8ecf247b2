// Attachments in the open chat: the attach button (file picker), files dropped on the chat
// or pasted into it, each upload's progress, and received media shown in the timeline
// (thumbnails, a full-size viewer, playable video and audio, downloadable documents).
// The sending and fetching are in ../media.ts.

import type { MatrixClient, MatrixEvent } from "matrix-js-sdk";

import "./attachments.css";

import { h, show } from "../dom";
import { FileTooLarge, fileUrl, formatSize, kindOfMsgtype, type MediaContent, mediaContent, sendFile, thumbnailUrl } from "../media";

// Thumbnails show at most this big; their box is sized before the image arrives, so the
// timeline does not jump as they load.
const BOX_W = 320;
const BOX_H = 240;

/** A stroked 24×24 SVG icon (the page has no icon font, and emoji fonts may be missing). */
function icon(path: string): SVGSVGElement {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.classList.add("icon");
    const shape = document.createElementNS(ns, "path");
    shape.setAttribute("d", path);
    svg.append(shape);
    return svg;
}

/** The CSS size of a w×h picture fitted into the thumbnail box, if its size is known. */
function boxSize(w: number | undefined, h: number | undefined): { width: string; aspectRatio: string } | null {
    if (!w || !h || w < 0 || h < 0) return null;
    const scale = Math.min(1, BOX_W / w, BOX_H / h);
    // The width, and the height from the aspect ratio, so a narrow screen shrinks both.
    return { width: `${Math.round(w * scale)}px`, aspectRatio: `${w} / ${h}` };
}

const PLUS = "M12 5v14M5 12h14";
const PLAY = "M8 5v14l11-7z";
const PAGE = "M6 2h8l4 4v16H6zM14 2v4h4M9 12h6M9 16h6";

export class Attachments {
    private readonly input = h("input", { type: "file", id: "attach-input", multiple: true, hidden: true, tabindex: "-1" });
    private readonly uploads = h("ul", { class: "uploads", id: "uploads", "aria-label": "Uploads", "aria-live": "polite" });
    private readonly error = h("p", { class: "error", role: "alert", id: "attach-error" });
    private readonly viewer = h("dialog", { class: "media-viewer", id: "media-viewer", "aria-label": "Image" });
    // One element per message, kept across re-renders (its blob URL loads once).
    private readonly views = new WeakMap<MatrixEvent, HTMLElement>();

    constructor(
        private readonly client: MatrixClient,
        private readonly roomId: () => string | null,
    ) {
        this.input.addEventListener("change", () => {
            this.send([...(this.input.files ?? [])]);
            this.input.value = "";
        });
        this.viewer.addEventListener("click", (e) => {
            if (e.target === this.viewer) this.viewer.close(); // a click outside the image
        });
        document.body.append(this.viewer);
    }

    /** The attach button, with its hidden file input, for the composer. */
    button(): HTMLElement {
        const button = h("button", { type: "button", id: "attach", class: "attach secondary", "aria-label": "Attach files", title: "Attach files" });
        button.append(icon(PLUS));
        button.addEventListener("click", () => this.input.click());
        return h("span", { class: "attach-wrap" }, button, this.input);
    }

    /** The upload list and the error line, shown above the composer. */
    status(): HTMLElement[] {
        return [this.uploads, this.error];
    }

    /** Take files dropped on `pane` or pasted into it. */
    bind(pane: HTMLElement): void {
        const hasFiles = (e: DragEvent): boolean => e.dataTransfer?.types.includes("Files") ?? false;
        let depth = 0; // dragenter/leave fire for every child crossed
        pane.addEventListener("dragenter", (e) => {
            if (!hasFiles(e) || !this.roomId()) return;
            depth += 1;
            pane.classList.add("dropping");
        });
        pane.addEventListener("dragleave", () => {
            depth = Math.max(0, depth - 1);
            if (depth === 0) pane.classList.remove("dropping");
        });
        pane.addEventListener("dragover", (e) => {
            if (!hasFiles(e) || !this.roomId()) return;
            e.preventDefault(); // allows the drop
            if (e.dataTransfer) e.dataTransfer.dropEffect = "copy";
        });
        pane.addEventListener("drop", (e) => {
            depth = 0;
            pane.classList.remove("dropping");
            if (!hasFiles(e) || !this.roomId()) return;
            e.preventDefault(); // or the browser opens the file
            this.send([...(e.dataTransfer?.files ?? [])]);
        });
        // A file dropped anywhere else must not make the browser leave the app to show it.
        for (const type of ["dragover", "drop"] as const) {
            window.addEventListener(type, (e) => {
                if (hasFiles(e)) e.preventDefault();
            });
        }
        pane.addEventListener("paste", (e) => {
            const files = [...(e.clipboardData?.files ?? [])];
            if (!files.length || !this.roomId()) return; // text pastes as usual
            e.preventDefault();
            this.send(files);
        });
    }

    /** Send each file in turn, showing its progress until the message is sent. */
    send(files: File[]): void {
        const roomId = this.roomId();
        if (!roomId || !files.length) return;
        this.error.textContent = "";
        let chain = Promise.resolve();
        for (const file of files) {
            const bar = h("progress", { max: "1", value: "0", "aria-label": `Uploading ${file.name}` });
            const percent = h("span", { class: "percent" }, "0%");
            const item = h("li", { class: "upload", "data-name": file.name, "data-state": "waiting" }, h("span", { class: "name" }, file.name), bar, percent);
            this.uploads.append(item);
            chain = chain.then(async () => {
                item.dataset.state = "uploading";
                try {
                    await sendFile(this.client, roomId, file, (fraction) => {
                        bar.value = fraction;
                        percent.textContent = `${Math.round(fraction * 100)}%`;
                        item.dataset.progress = String(fraction);
                    });
                    item.remove();
                } catch (err) {
                    item.remove();
                    // The server's own words when it refused (quota, size, full disk).
                    const reason = (err as { data?: { error?: string } }).data?.error ?? (err as Error).message;
                    this.error.textContent = err instanceof FileTooLarge ? err.message : `Could not send “${file.name}”: ${reason || "unknown error"}.`;
                }
            });
        }
    }

    /** The message's media (thumbnail, player or download), or null if it has none. */
    view(event: MatrixEvent): HTMLElement | null {
        const known = this.views.get(event);
        if (known) return known;
        const content = mediaContent(event);
        if (!content) return null;
        const kind = kindOfMsgtype(content.msgtype);
        const view =
            kind === "image" ? this.image(content) : kind === "video" || kind === "audio" ? this.player(content, kind) : this.document(content);
        view.dataset.mxc = content.file?.url ?? content.url ?? "";
        view.dataset.encrypted = content.file ? "true" : "false";
        this.views.set(event, view);
        return view;
    }

    private image(content: MediaContent): HTMLElement {
        const thumb = content.info?.thumbnail_info;
        const img = h("img", { class: "thumbnail", alt: content.body });
        const size = boxSize(thumb?.w ?? content.info?.w, thumb?.h ?? content.info?.h);
        if (size) Object.assign(img.style, size);
        const open = h("button", { type: "button", class: "media image", "aria-label": `Open ${content.body}` }, img);
        const loading = thumbnailUrl(this.client, content) ?? fileUrl(this.client, content);
        this.load(open, loading, (url) => {
            img.src = url;
        });
        open.addEventListener("click", () => this.openImage(content));
        return open;
    }

    /** A video (its decrypted poster) or audio with a play button: the file itself, which may
     * be large, is fetched and decrypted only when asked for. */
    private player(content: MediaContent, kind: "video" | "audio"): HTMLElement {
        const player = kind === "video" ? h("video", { preload: "none", playsinline: true }) : h("audio", { preload: "none" });
        const start = h("button", { type: "button", class: "play", "aria-label": `Play ${content.body}` }, icon(PLAY));
        const frame = h("div", { class: "frame" }, player, start);
        const box = h("div", { class: `media ${kind}` }, frame, h("span", { class: "caption" }, content.body));
        if (player instanceof HTMLVideoElement) {
            const size = boxSize(content.info?.w, content.info?.h);
            if (size) Object.assign(player.style, size);
            void thumbnailUrl(this.client, content)
                ?.then((url) => {
                    player.poster = url;
                })
                .catch(() => undefined); // no poster: the play button still works
        }
        start.addEventListener("click", () => {
            start.disabled = true;
            this.load(box, fileUrl(this.client, content), (url) => {
                player.controls = true;
                player.src = url;
                start.remove();
                void player.play().catch(() => undefined); // the controls are there to retry
            });
        });
        return box;
    }

    private document(content: MediaContent): HTMLElement {
        const size = content.info?.size;
        const name = content.filename ?? content.body;
        const button = h(
            "button",
            { type: "button", class: "media document", "aria-label": `Download ${name}` },
            h("span", { class: "file-icon" }, icon(PAGE)),
            h("span", { class: "file-name" }, name),
            size ? h("span", { class: "file-size" }, formatSize(size)) : null,
        );
        button.addEventListener("click", () => {
            button.disabled = true;
            fileUrl(this.client, content)
                .then((url) => {
                    // A link with `download` saves under the file's own name.
                    const link = h("a", { href: url, download: name, hidden: true });
                    document.body.append(link);
                    link.click();
                    link.remove();
                })
                .catch((err: unknown) => {
                    this.error.textContent = `Could not download “${name}”: ${(err as Error).message}.`;
                })
                .finally(() => {
                    button.disabled = false;
                });
        });
        return button;
    }

    private load(view: HTMLElement, url: Promise<string>, use: (url: string) => void): void {
        view.dataset.state = "loading";
        url.then(
            (u) => {
                use(u);
                view.dataset.state = "ready";
            },
            () => {
                view.dataset.state = "failed";
                view.append(h("span", { class: "media-error" }, "Could not load this file"));
            },
        );
    }

    private openImage(content: MediaContent): void {
        const img = h("img", { class: "full", alt: content.body });
        const close = h("button", { type: "button", class: "close secondary", "aria-label": "Close" }, "✕");
        close.addEventListener("click", () => this.viewer.close());
        show(this.viewer, close, img, h("p", { class: "caption" }, content.body));
        this.viewer.dataset.state = "loading";
        this.viewer.showModal();
        fileUrl(this.client, content).then(
            (url) => {
                img.src = url;
                this.viewer.dataset.state = "ready";
            },
            () => {
                this.viewer.dataset.state = "failed";
                this.viewer.append(h("p", { class: "media-error" }, "Could not load this image"));
            },
        );
    }
}
