// Attachments in the web client (web/src/media.ts, web/src/screens/attachments.ts), in
// Chromium with two browser contexts as two people (tests/test_web_media.py runs it):
//
//   node web_media.mjs <base_url> <alice> <bob> <password> <files_dir> <screenshot_dir> <plain_room_id>
//
// Both log in (the test registered them and made a plain, unencrypted room for them);
// Alice starts an encrypted chat with Bob, who accepts. Alice sends
// photo.png with the attach button's file picker, pasted.png by pasting it into the
// composer, dropped.png by dropping it on the chat (a DataTransfer, as a drag from the
// desktop makes), a short video she records from a canvas, and report.pdf; then big.bin,
// over the server's upload limit, which is refused with a message. Her uploads show their
// progress. Bob sees the three thumbnails (decrypted: their size and pixels are read back),
// opens the photo full size, plays the video and downloads the PDF under its name. The
// Last, in the plain room, Alice sends plain.png unencrypted and Bob sees it too. The
// last stdout line is `RESULT {json}`: what each saw, the downloaded PDF's bytes (base64),
// and the media URIs, which the pytest side fetches from the server to show it holds only
// ciphertext. Console errors, page errors and unexpected failed requests fail the run.

import { readFileSync } from "node:fs";
import { join } from "node:path";

import { check, launchChromium, passEncryptionScreens, runMain, SDK_PROBES, watchPage } from "./harness.mjs";

const [baseUrl, aliceName, bobName, password, filesDir, shots, plainRoomId] = process.argv.slice(2);
if (!plainRoomId) {
    console.error("usage: node web_media.mjs <base_url> <alice> <bob> <password> <files_dir> <screenshot_dir> <plain_room_id>");
    process.exit(2);
}

// Failed requests a working client makes on purpose (as in web_client.mjs): the SDK's
// probes for a key backup and MatrixRTC transports.
const EXPECTED_FAILURES = [
    ...SDK_PROBES,
];
const WAIT = { timeout: 30_000 };

let browser = null;
const problems = [];

async function openPerson(name, viewport) {
    const context = await browser.newContext({ viewport, acceptDownloads: true });
    const page = await context.newPage();
    watchPage(page, name, { expected: EXPECTED_FAILURES, problems });
    return { name, context, page };
}

const shot = (person, file) => person.page.screenshot({ path: join(shots, file) });

async function logIn({ page }, username) {
    await page.goto(`${baseUrl}/login`);
    await page.waitForSelector("#auth-title");
    await page.fill("#username", username);
    await page.fill("#password", password);
    await page.press("#password", "Enter");
    // The test made the account through the API: its first login sets up encryption.
    await passEncryptionScreens(page);
    return page.textContent("#me");
}

/** Pick `files` (paths, or {name, mimeType, buffer}) with the attach button's file picker. */
async function pick(page, files) {
    const [chooser] = await Promise.all([page.waitForEvent("filechooser"), page.click("#attach")]);
    await chooser.setFiles(files);
}

/** Files the page builds from bytes, for a paste or a drop: [{name, type, base64}]. */
function asTransfer(name, type) {
    return { name, type, base64: readFileSync(join(filesDir, name)).toString("base64") };
}

/** Paste a file into the composer, as Ctrl+V with an image on the clipboard does. */
async function paste(page, file) {
    await page.focus("#composer");
    await page.evaluate(({ name, type, base64 }) => {
        const data = new DataTransfer();
        data.items.add(new File([Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))], name, { type }));
        const event = new ClipboardEvent("paste", { bubbles: true, cancelable: true, clipboardData: data });
        document.querySelector("#composer").dispatchEvent(event);
    }, file);
}

/** Drag a file over the chat (screenshot while it hovers), then drop it. */
async function drop(person, file) {
    await person.page.evaluate(({ name, type, base64 }) => {
        const data = new DataTransfer();
        data.items.add(new File([Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))], name, { type }));
        window.__drop = data;
        const target = document.querySelector("#messages");
        for (const kind of ["dragenter", "dragover"]) {
            target.dispatchEvent(new DragEvent(kind, { bubbles: true, cancelable: true, dataTransfer: data }));
        }
    }, file);
    const hovering = await person.page.$eval("#chat", (c) => c.classList.contains("dropping"));
    await shot(person, "media-drop.png");
    await person.page.evaluate(() => {
        const target = document.querySelector("#messages");
        target.dispatchEvent(new DragEvent("drop", { bubbles: true, cancelable: true, dataTransfer: window.__drop }));
    });
    return hovering;
}

/** A one-second WebM recorded from a canvas in the page: a real, playable video. */
async function recordVideo(page) {
    const base64 = await page.evaluate(async () => {
        const canvas = document.createElement("canvas");
        canvas.width = 160;
        canvas.height = 120;
        const ctx = canvas.getContext("2d");
        const recorder = new MediaRecorder(canvas.captureStream(15), { mimeType: "video/webm;codecs=vp8" });
        const chunks = [];
        recorder.ondataavailable = (e) => chunks.push(e.data);
        let frame = 0;
        const draw = () => {
            ctx.fillStyle = frame % 2 ? "#0b6e4f" : "#f0a500";
            ctx.fillRect(0, 0, 160, 120);
            frame += 1;
        };
        draw();
        const painter = setInterval(draw, 60);
        const stopped = new Promise((resolve) => (recorder.onstop = resolve));
        recorder.start(100);
        setTimeout(() => recorder.stop(), 1000); // the length of the recording, not a wait for ordering
        await stopped;
        clearInterval(painter);
        const bytes = new Uint8Array(await new Blob(chunks, { type: "video/webm" }).arrayBuffer());
        let text = "";
        for (const b of bytes) text += String.fromCharCode(b);
        return btoa(text);
    });
    return Buffer.from(base64, "base64");
}

/** Record every upload row's progress in the page, as the user sees it come and go. */
async function watchUploads(page) {
    await page.evaluate(() => {
        window.__uploads = {};
        const seen = () => {
            for (const li of document.querySelectorAll("#uploads li.upload")) {
                const entry = (window.__uploads[li.dataset.name] ??= { states: [], progress: [] });
                if (entry.states.at(-1) !== li.dataset.state) entry.states.push(li.dataset.state);
                const bar = li.querySelector("progress");
                if (bar && entry.progress.at(-1) !== bar.value) entry.progress.push(bar.value);
            }
        };
        new MutationObserver(seen).observe(document.body, { subtree: true, childList: true, attributes: true, characterData: true });
    });
}

/** The media messages shown in the open chat, once there are at least `count`. */
async function mediaItems(page, count) {
    const found = await page.waitForFunction(
        (n) => {
            const items = [...document.querySelectorAll("#messages li.message")]
                .filter((li) => li.querySelector(".media"))
                .map((li) => {
                    const media = li.querySelector(".media");
                    return {
                        kind: [...media.classList].find((c) => c !== "media"),
                        text: media.textContent,
                        mxc: media.dataset.mxc,
                        encrypted: media.dataset.encrypted === "true",
                        state: media.dataset.state ?? null,
                        mine: li.classList.contains("mine"),
                    };
                });
            return items.length >= n ? items : null;
        },
        count,
        WAIT,
    );
    return found.jsonValue();
}

/** The shown thumbnail of the image named `name`: its decoded size and two pixels. */
function thumbnailOf(page, name) {
    return page.evaluate((n) => {
        const img = [...document.querySelectorAll("#messages img.thumbnail")].find((i) => i.alt === n);
        const canvas = document.createElement("canvas");
        canvas.width = img.naturalWidth;
        canvas.height = img.naturalHeight;
        const ctx = canvas.getContext("2d");
        ctx.drawImage(img, 0, 0);
        const at = (x, y) => [...ctx.getImageData(Math.floor(x * img.naturalWidth), Math.floor(y * img.naturalHeight), 1, 1).data.slice(0, 3)];
        return { width: img.naturalWidth, height: img.naturalHeight, left: at(0.25, 0.5), right: at(0.75, 0.5), src: img.src.slice(0, 5) };
    }, name);
}

async function main(results) {
    browser = await launchChromium();
    const alice = await openPerson("alice", { width: 390, height: 780 });
    const bob = await openPerson("bob", { width: 1100, height: 760 });
    await logIn(alice, aliceName);
    const bobId = await logIn(bob, bobName);

    // Alice starts an encrypted chat with Bob; he accepts.
    await alice.page.fill("#new-chat-user", bobId);
    await alice.page.click("#new-chat-start");
    await alice.page.waitForSelector("#e2e-state");
    results.encryptedShown = await alice.page.textContent("#e2e-state");
    results.roomId = decodeURIComponent(new URL(alice.page.url()).pathname.slice("/chat/".length));
    const bobItem = `#chat-list [data-room-id="${results.roomId}"]`;
    await bob.page.waitForSelector(bobItem, WAIT);
    await bob.page.click(bobItem);
    await bob.page.click("#accept-invite");
    await bob.page.waitForSelector("#composer");

    // Alice sends: by the file picker, by paste, by drag and drop, a video and a PDF.
    await watchUploads(alice.page);
    const waitSent = (count) =>
        alice.page.waitForFunction((n) => document.querySelectorAll("#messages li.mine .media").length >= n && !document.querySelector("#uploads li"), count, WAIT);
    await pick(alice.page, join(filesDir, "photo.png"));
    await waitSent(1);
    await paste(alice.page, asTransfer("pasted.png", "image/png"));
    await waitSent(2);
    results.dropHover = await drop(alice, asTransfer("dropped.png", "image/png"));
    await waitSent(3);
    const video = await recordVideo(alice.page);
    results.videoSize = video.length;
    await pick(alice.page, { name: "clip.webm", mimeType: "video/webm", buffer: video });
    await waitSent(4);
    await pick(alice.page, join(filesDir, "report.pdf"));
    await waitSent(5);
    results.uploads = await alice.page.evaluate(() => window.__uploads);

    // Over the server's limit: refused before any upload, with the limit named.
    await pick(alice.page, join(filesDir, "big.bin"));
    await alice.page.waitForFunction(() => document.querySelector("#attach-error")?.textContent, null, WAIT);
    results.tooLarge = await alice.page.textContent("#attach-error");
    results.uploadsLeft = await alice.page.$$eval("#uploads li", (l) => l.length);

    // Bob sees them all, decrypted in his browser (what he had at the timeout, if not).
    const bobsMedia = () => ({
        imagesReady: document.querySelectorAll('#messages .media.image[data-state="ready"]').length,
        videoPoster: (document.querySelector("#messages .media.video video")?.poster ?? "").slice(0, 5),
        documents: document.querySelectorAll("#messages .media.document").length,
        states: [...document.querySelectorAll("#messages .media")].map((m) => `${m.className}:${m.dataset.state ?? ""}`),
        thumbnailsLoaded: [...document.querySelectorAll("#messages img.thumbnail")].map((i) => i.complete && i.naturalWidth > 0),
    });
    await bob.page
        .waitForFunction(
            () =>
                document.querySelectorAll('#messages .media.image[data-state="ready"]').length === 3 &&
                document.querySelector("#messages .media.video video")?.poster.startsWith("blob:") &&
                document.querySelectorAll("#messages .media.document").length === 1 &&
                [...document.querySelectorAll("#messages img.thumbnail")].every((i) => i.complete && i.naturalWidth > 0),
            null,
            WAIT,
        )
        .catch(async (e) => {
            throw new Error(`${e.message}; Bob's media then: ${JSON.stringify(await bob.page.evaluate(bobsMedia))}`);
        });
    results.bobMedia = await mediaItems(bob.page, 5);
    results.aliceMedia = await mediaItems(alice.page, 5);
    results.thumbnails = {};
    for (const name of ["photo.png", "pasted.png", "dropped.png"]) results.thumbnails[name] = await thumbnailOf(bob.page, name);
    for (const person of [alice, bob]) await person.page.$eval("#messages", (m) => (m.scrollTop = m.scrollHeight));
    await shot(bob, "media-chat-desktop.png");
    await shot(alice, "media-chat-phone.png");

    // The photo full size, in the viewer.
    await bob.page.click('#messages button.media.image[aria-label="Open photo.png"]');
    await bob.page.waitForSelector('#media-viewer[data-state="ready"] img.full', WAIT);
    await bob.page.waitForFunction(() => document.querySelector("#media-viewer img.full").naturalWidth > 0, null, WAIT);
    results.fullImage = await bob.page.$eval("#media-viewer img.full", (i) => ({ width: i.naturalWidth, height: i.naturalHeight }));
    await shot(bob, "media-viewer.png");
    await bob.page.click("#media-viewer .close");
    results.viewerClosed = await bob.page.$eval("#media-viewer", (d) => !d.open);

    // The video (its poster decrypted above) is fetched and decrypted when played, and plays.
    results.videoBeforePlay = await bob.page.$eval("#messages .media.video video", (v) => ({ src: v.currentSrc, poster: v.poster.slice(0, 5) }));
    await bob.page.click("#messages .media.video button.play");
    await bob.page.waitForSelector('#messages .media.video[data-state="ready"]', WAIT);
    await bob.page.waitForFunction(() => document.querySelector("#messages .media.video video").currentTime > 0, null, WAIT);
    results.video = await bob.page.$eval("#messages .media.video video", (v) => {
        v.pause();
        return { width: v.videoWidth, height: v.videoHeight, played: v.currentTime > 0, src: v.currentSrc.slice(0, 5) };
    });

    // The PDF downloads under its name, with its bytes.
    const [download] = await Promise.all([bob.page.waitForEvent("download", WAIT), bob.page.click("#messages button.media.document")]);
    results.download = {
        name: download.suggestedFilename(),
        base64: readFileSync(await download.path()).toString("base64"),
    };
    results.documentText = await bob.page.textContent("#messages button.media.document");

    // The plain room: the same, unencrypted.
    const plainItem = `#chat-list [data-room-id="${plainRoomId}"]`;
    await alice.page.click("button.back");
    await alice.page.click(plainItem);
    await alice.page.waitForFunction(() => document.querySelector("#e2e-state")?.textContent === "Not encrypted", null, WAIT);
    await pick(alice.page, join(filesDir, "plain.png"));
    await bob.page.click(plainItem);
    await bob.page.waitForFunction(() => document.querySelector("#e2e-state")?.textContent === "Not encrypted", null, WAIT);
    await bob.page.waitForFunction(
        () => [...document.querySelectorAll('#messages .media.image[data-state="ready"] img')].some((i) => i.alt === "plain.png" && i.complete && i.naturalWidth > 0),
        null,
        WAIT,
    );
    results.plainMedia = await mediaItems(bob.page, 1);
    results.plainThumbnail = await thumbnailOf(bob.page, "plain.png");
    await bob.page.click('#messages button.media.image[aria-label="Open plain.png"]');
    await bob.page.waitForSelector('#media-viewer[data-state="ready"] img.full', WAIT);
    await bob.page.waitForFunction(() => document.querySelector("#media-viewer img.full").naturalWidth > 0, null, WAIT);
    results.plainFull = await bob.page.$eval("#media-viewer img.full", (i) => ({ width: i.naturalWidth, height: i.naturalHeight }));

    results.failedMedia = await bob.page.$$eval('#messages .media[data-state="failed"]', (l) => l.length);
    results.problems = problems;
    check(problems.length === 0, `no console errors or failed requests:\n${problems.join("\n")}`);
}

await runMain(main, {
    totalMs: 150_000,
    cleanup: async () => {
        await browser?.close();
    },
});
