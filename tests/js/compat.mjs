// matrix-js-sdk's start-up and settings calls, and the legacy paths older clients use:
// /versions and its unstable features, /voip/turnServer, OpenID tokens,
// /thirdparty/protocols, an upload and the config through /_matrix/media/r0, a
// cross-signing key query through the `unstable` prefix.
//
//   node compat.mjs <base_url> <token_alice> <token_bob>
//
// On success the last line on stdout is `RESULT {json}`; on failure it prints
// `FAILED: ...` to stderr and exits 1. The assertions are in tests/test_compat_js.py.

const sdk = await import("matrix-js-sdk");
const { Method, logger } = sdk;
logger?.setLevel?.("warn");
const quietLogger = {
    trace() {},
    debug() {},
    info() {},
    warn: (...args) => console.error(...args),
    error: (...args) => console.error(...args),
    getChild() {
        return quietLogger;
    },
};

const [baseUrl, tokenAlice, tokenBob] = process.argv.slice(2);
if (!baseUrl || !tokenBob) {
    console.error("usage: node compat.mjs <base_url> <token_alice> <token_bob>");
    process.exit(2);
}

async function client(token) {
    const response = await fetch(`${baseUrl}/_matrix/client/v3/account/whoami`, {
        headers: { Authorization: `Bearer ${token}` },
    });
    const who = await response.json();
    return sdk.createClient({ baseUrl, accessToken: token, userId: who.user_id, deviceId: who.device_id, logger: quietLogger });
}

async function errcode(promise) {
    try {
        await promise;
        return null;
    } catch (e) {
        return { status: e.httpStatus, errcode: e.errcode };
    }
}

try {
    const alice = await client(tokenAlice);
    const bob = await client(tokenBob);
    const out = {};

    const versions = await alice.getVersions();
    out.versions = versions.versions;
    out.cross_signing = await alice.doesServerSupportUnstableFeature("org.matrix.e2e_cross_signing");
    out.supports_v1_1 = await alice.isVersionSupported("v1.1");

    out.turn = await alice.turnServer();

    const openid = await alice.getOpenIdToken();
    out.openid = openid;
    const info = await fetch(
        `${baseUrl}/_matrix/federation/v1/openid/userinfo?access_token=${encodeURIComponent(openid.access_token)}`,
    );
    out.userinfo = { status: info.status, body: await info.json() };
    // Bob may not ask for a token in Alice's name.
    out.openid_for_other = await errcode(
        bob.http.authedRequest(Method.Post, `/user/${encodeURIComponent(alice.getUserId())}/openid/request_token`, undefined, {}),
    );

    out.protocols = await alice.getThirdpartyProtocols();

    // Element Web 1.11's upload path and config read (matrix-js-sdk 26 used the r0 prefix).
    const r0 = { prefix: "/_matrix/media/r0" };
    out.r0_config = await alice.http.authedRequest(Method.Get, "/config", undefined, undefined, r0);
    const uploaded = await alice.http.authedRequest(Method.Post, "/upload", { filename: "note.txt" }, "hello from r0", {
        ...r0,
        headers: { "Content-Type": "text/plain" },
    });
    out.r0_upload = uploaded;
    const download = await fetch(
        `${baseUrl}/_matrix/client/v1/media/download/${uploaded.content_uri.slice("mxc://".length)}`,
        { headers: { Authorization: `Bearer ${tokenAlice}` } },
    );
    out.r0_download = { status: download.status, body: await download.text() };

    // A key query through the unstable prefix, as the legacy crypto did.
    out.unstable_query = await alice.http.authedRequest(
        Method.Post,
        "/keys/query",
        undefined,
        { device_keys: { [alice.getUserId()]: [] } },
        { prefix: "/_matrix/client/unstable" },
    );

    console.log("RESULT " + JSON.stringify(out));
    process.exit(0);
} catch (e) {
    console.error("FAILED:", e?.stack ?? e);
    process.exit(1);
}
