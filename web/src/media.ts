// Attachments, without the screens: sending a file as m.image / m.video / m.audio / m.file
// (encrypted in the browser when the room is, with a canvas-made thumbnail for images and
// videos) and turning a received one back into a blob URL.
//
// Encrypted rooms follow the spec's "Sending encrypted attachments": AES-CTR with a fresh
// key, SHA-256 of the ciphertext, the key in the (Megolm-encrypted) event as an
// EncryptedFile; the server only ever stores ciphertext. matrix-encrypt-attachment does the
// cryptography with WebCrypto.
//
// Media is authenticated (/_matrix/client/v1/media/...): an <img src> cannot send the access
// token, so every file is fetched with an Authorization header and shown from a blob URL.

import { decryptAttachment, encryptAttachment, type IEncryptedFile } from "matrix-encrypt-attachment";
import { type MatrixClient, type MatrixEvent, MsgType } from "matrix-js-sdk";
import type { RoomMessageEventContent } from "matrix-js-sdk/lib/@types/events.js";

/** The spec's EncryptedFile: where the ciphertext is, and how to decrypt and check it. */
export interface EncryptedFile extends IEncryptedFile {
    url: string;
}

/** Where a file is: plain (`url`) or encrypted (`file`). */
export interface Source {
    url?: string;
    file?: EncryptedFile;
}

export interface MediaInfo {
    mimetype?: string;
    size?: number;
    w?: number;
    h?: number;
    duration?: number;
    thumbnail_info?: { mimetype: string; size: number; w: number; h: number };
    thumbnail_url?: string;
    thumbnail_file?: EncryptedFile;
}

export interface MediaContent extends Source {
    msgtype: string;
    body: string;
    filename?: string;
    info?: MediaInfo;
}

export type MediaKind = "image" | "video" | "audio" | "file";

// Thumbnails fit in this box (the spec's suggested 800×600 for the largest size).
const THUMB_W = 800;
const THUMB_H = 600;
const VIDEO_FRAME_TIMEOUT_MS = 5000;

const MSGTYPES: Record<MediaKind, string> = {
    image: MsgType.Image,
    video: MsgType.Video,
    audio: MsgType.Audio,
    file: MsgType.File,
};

/** Types a blob URL may carry into <img>, <video> or <audio>; anything else is opaque bytes. */
const SHOWABLE = /^(image\/(png|jpeg|gif|webp|avif|bmp)|video\/(mp4|webm|ogg|quicktime)|audio\/(mpeg|mp4|ogg|webm|wav|flac|aac))$/;

export class FileTooLarge extends Error {
    constructor(
        readonly fileName: string,
        readonly size: number,
        readonly limit: number,
    ) {
        super(`“${fileName}” is ${formatSize(size)}: this server takes files up to ${formatSize(limit)}.`);
    }
}

export function formatSize(bytes: number): string {
    if (bytes < 1024) return `${bytes} B`;
    const units = ["KB", "MB", "GB"];
    let value = bytes / 1024;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
        value /= 1024;
        unit += 1;
    }
    return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

/** The media content of a message, or null if it is not a file the client can show. */
export function mediaContent(event: MatrixEvent): MediaContent | null {
    if (event.isDecryptionFailure() || event.isRedacted()) return null;
    const content = event.getContent<Partial<MediaContent>>();
    const kind = kindOfMsgtype(content.msgtype);
    if (!kind || typeof content.body !== "string") return null;
    const hasSource = typeof content.url === "string" || typeof content.file?.url === "string";
    return hasSource ? (content as MediaContent) : null;
}

export function kindOfMsgtype(msgtype: unknown): MediaKind | null {
    const found = Object.entries(MSGTYPES).find(([, value]) => value === msgtype);
    return found ? (found[0] as MediaKind) : null;
}

/** m.image only for images the browser can decode (it makes their thumbnail). */
function kindOfFile(file: File): MediaKind {
    if (file.type.startsWith("image/") && SHOWABLE.test(file.type)) return "image";
    if (file.type.startsWith("video/")) return "video";
    if (file.type.startsWith("audio/")) return "audio";
    return "file";
}

// --- sending ---------------------------------------------------------------------------

/** The server's upload limit (`m.upload.size` of /media/config), asked once per client. */
const limits = new WeakMap<MatrixClient, Promise<number | null>>();

export function uploadLimit(client: MatrixClient): Promise<number | null> {
    let limit = limits.get(client);
    if (!limit) {
        limit = client
            .getMediaConfig(true)
            .then((config) => (typeof config["m.upload.size"] === "number" ? config["m.upload.size"] : null))
            .catch(() => {
                limits.delete(client); // ask again next time
                return null;
            });
        limits.set(client, limit);
    }
    return limit;
}

interface Thumbnail {
    blob: Blob;
    w: number;
    h: number;
}

function canvasBlob(canvas: HTMLCanvasElement, type: string): Promise<Blob> {
    return new Promise((resolve, reject) => {
        canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("the canvas made no image"))), type, 0.85);
    });
}

/** Draw `source` (w×h) scaled into the thumbnail box; JPEG unless transparency may matter. */
async function drawThumbnail(source: CanvasImageSource, w: number, h: number, type: string): Promise<Thumbnail> {
    const scale = Math.min(1, THUMB_W / w, THUMB_H / h);
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(w * scale));
    canvas.height = Math.max(1, Math.round(h * scale));
    canvas.getContext("2d")?.drawImage(source, 0, 0, canvas.width, canvas.height);
    const blob = await canvasBlob(canvas, type === "image/jpeg" ? "image/jpeg" : "image/png");
    return { blob, w: canvas.width, h: canvas.height };
}

async function describeImage(file: File): Promise<{ info: MediaInfo; thumb: Thumbnail } | null> {
    let bitmap: ImageBitmap;
    try {
        bitmap = await createImageBitmap(file); // EXIF orientation applied
    } catch {
        return null; // not decodable here: sent as a plain file
    }
    try {
        const thumb = await drawThumbnail(bitmap, bitmap.width, bitmap.height, file.type);
        return { info: { w: bitmap.width, h: bitmap.height }, thumb };
    } finally {
        bitmap.close();
    }
}

/** A video's size and duration, and its first frame as the thumbnail, when the browser can
 * play it; null (sent without them) otherwise. */
async function describeVideo(file: File): Promise<{ info: MediaInfo; thumb: Thumbnail | null } | null> {
    const url = URL.createObjectURL(file);
    const video = document.createElement("video");
    video.muted = true;
    video.preload = "auto";
    try {
        await new Promise<void>((resolve, reject) => {
            const timer = window.setTimeout(() => reject(new Error("the video did not load")), VIDEO_FRAME_TIMEOUT_MS);
            video.addEventListener("loadeddata", () => {
                window.clearTimeout(timer);
                resolve();
            });
            video.addEventListener("error", () => {
                window.clearTimeout(timer);
                reject(new Error("the video cannot be played here"));
            });
            video.src = url;
        });
        const info: MediaInfo = { w: video.videoWidth, h: video.videoHeight };
        // A recorded WebM may not know its duration (Infinity): then it is left out.
        if (Number.isFinite(video.duration)) info.duration = Math.round(video.duration * 1000);
        const thumb = video.videoWidth ? await drawThumbnail(video, video.videoWidth, video.videoHeight, "image/jpeg") : null;
        return { info, thumb };
    } catch {
        return null;
    } finally {
        video.removeAttribute("src");
        video.load();
        URL.revokeObjectURL(url);
    }
}

/** Upload `data`, encrypted first when `encrypt`; reports the bytes sent so far. */
async function upload(
    client: MatrixClient,
    data: Blob,
    name: string,
    encrypt: boolean,
    onProgress: (loaded: number) => void,
): Promise<Source> {
    const progressHandler = ({ loaded }: { loaded: number }): void => onProgress(loaded);
    if (!encrypt) {
        const { content_uri } = await client.uploadContent(data, { name, type: data.type, progressHandler });
        return { url: content_uri };
    }
    const { data: ciphertext, info } = await encryptAttachment(await data.arrayBuffer());
    // Nothing about the file leaves in clear: no name, no type.
    const { content_uri } = await client.uploadContent(new Blob([ciphertext]), {
        type: "application/octet-stream",
        includeFilename: false,
        progressHandler,
    });
    return { file: { ...info, url: content_uri } };
}

export interface SendProgress {
    /** 0..1 of the bytes uploaded (the file and its thumbnail). */
    (fraction: number): void;
}

/** Send `file` to the room as a media message. Throws FileTooLarge above the server's limit. */
export async function sendFile(client: MatrixClient, roomId: string, file: File, onProgress: SendProgress): Promise<void> {
    const limit = await uploadLimit(client);
    if (limit !== null && file.size > limit) throw new FileTooLarge(file.name, file.size, limit);
    const encrypt = (await client.getCrypto()?.isEncryptionEnabledInRoom(roomId)) ?? false;

    let kind = kindOfFile(file);
    let described: { info: MediaInfo; thumb: Thumbnail | null } | null = null;
    if (kind === "image") {
        described = await describeImage(file);
        if (!described) kind = "file";
    } else if (kind === "video") {
        described = await describeVideo(file);
    }
    const thumb = described?.thumb ?? null;
    const total = file.size + (thumb?.blob.size ?? 0);
    let thumbSent = 0;
    let fileSent = 0;
    const report = (): void => onProgress(total ? Math.min(1, (thumbSent + fileSent) / total) : 1);
    report();

    const info: MediaInfo = { ...(described?.info ?? {}), mimetype: file.type || "application/octet-stream", size: file.size };
    if (thumb) {
        const source = await upload(client, thumb.blob, "thumbnail", encrypt, (n) => {
            thumbSent = n;
            report();
        });
        info.thumbnail_info = { mimetype: thumb.blob.type, size: thumb.blob.size, w: thumb.w, h: thumb.h };
        if (source.file) info.thumbnail_file = source.file;
        else info.thumbnail_url = source.url;
    }
    const source = await upload(client, file, file.name, encrypt, (n) => {
        fileSent = n;
        report();
    });
    const content: MediaContent = { msgtype: MSGTYPES[kind], body: file.name, filename: file.name, info, ...source };
    // The SDK's content types list each msgtype's fields; ours is the spec's shape for all four.
    await client.sendMessage(roomId, content as unknown as RoomMessageEventContent);
}

// --- receiving -------------------------------------------------------------------------

// Blob URLs by mxc URI (and thumbnail size), so a re-render or a second look costs nothing.
const blobs = new Map<string, Promise<string>>();

function httpUrl(client: MatrixClient, mxc: string, thumbnail: boolean): string {
    const url = thumbnail
        ? client.mxcUrlToHttp(mxc, THUMB_W, THUMB_H, "scale", false, true, true)
        : client.mxcUrlToHttp(mxc, undefined, undefined, undefined, false, true, true);
    if (!url) throw new Error(`not a media URI: ${mxc}`);
    return url;
}

async function fetchBlobUrl(client: MatrixClient, source: Source, mimetype: string | undefined, thumbnail: boolean): Promise<string> {
    const mxc = source.file?.url ?? source.url ?? "";
    const response = await fetch(httpUrl(client, mxc, thumbnail && !source.file), {
        headers: { Authorization: `Bearer ${client.getAccessToken() ?? ""}` },
    });
    if (!response.ok) throw new Error(`the server answered ${response.status}`);
    let bytes = await response.arrayBuffer();
    // decryptAttachment checks the SHA-256 of the ciphertext before it decrypts.
    if (source.file) bytes = await decryptAttachment(bytes, source.file);
    const type = mimetype && SHOWABLE.test(mimetype) ? mimetype : "application/octet-stream";
    return URL.createObjectURL(new Blob([bytes], { type }));
}

/** A blob URL of the file (decrypted), fetched once. */
export function fileUrl(client: MatrixClient, content: MediaContent): Promise<string> {
    return cached(`${content.file?.url ?? content.url}`, () => fetchBlobUrl(client, content, content.info?.mimetype, false));
}

/** A blob URL of the message's thumbnail: the one sent with it, else (plain media only) one
 * the server makes; null when there is none to show. */
export function thumbnailUrl(client: MatrixClient, content: MediaContent): Promise<string> | null {
    const info = content.info ?? {};
    if (info.thumbnail_file || info.thumbnail_url) {
        const source: Source = info.thumbnail_file ? { file: info.thumbnail_file } : { url: info.thumbnail_url };
        const mxc = source.file?.url ?? source.url;
        return cached(`${mxc}`, () => fetchBlobUrl(client, source, info.thumbnail_info?.mimetype ?? "image/jpeg", false));
    }
    if (content.url && kindOfMsgtype(content.msgtype) === "image") {
        return cached(`${content.url}#thumb`, () => fetchBlobUrl(client, content, "image/png", true));
    }
    return null;
}

function cached(key: string, load: () => Promise<string>): Promise<string> {
    let url = blobs.get(key);
    if (!url) {
        url = load();
        url.catch(() => blobs.delete(key)); // a failure may be retried
        blobs.set(key, url);
    }
    return url;
}
