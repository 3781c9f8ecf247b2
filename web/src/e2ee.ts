// End-to-end encryption set-up (docs/web-client.md, "Encryption"): cross-signing and a key
// backup at sign-up, protected by a recovery key the user keeps; a new device proves itself
// with that key or by emoji from another device, and then reads old messages from the backup.
//
// The recovery key never leaves this page: the SDK asks for it through `cryptoCallbacks`
// while it reads or writes secret storage, and gets it from the holder below.

import {
    type CryptoApi,
    type CryptoCallbacks,
    CryptoEvent,
    decodeRecoveryKey,
} from "matrix-js-sdk/lib/crypto-api/index.js";
import type { MatrixClient } from "matrix-js-sdk";
import type { SecretStorageKeyDescription } from "matrix-js-sdk/lib/secret-storage.js";

export class RecoveryKeyError extends Error {}

// The secret storage key of this page, once created here or typed in by the user.
let heldKey: { keyId: string; key: Uint8Array<ArrayBuffer> } | null = null;

export const cryptoCallbacks: CryptoCallbacks = {
    getSecretStorageKey: async ({ keys }) => {
        if (heldKey && heldKey.keyId in keys) return [heldKey.keyId, heldKey.key];
        return null;
    },
    cacheSecretStorageKey: (keyId, _info, key) => {
        heldKey = { keyId, key };
    },
};

/** Forget the recovery key once the set-up that needed it is over. */
function forgetRecoveryKey(): void {
    heldKey = null;
}

function cryptoOf(client: MatrixClient): CryptoApi {
    const crypto = client.getCrypto();
    if (!crypto) throw new Error("Encryption is not available in this browser.");
    return crypto;
}

/**
 * At sign-up: cross-signing keys (uploaded with the password just entered, as the server's
 * user-interactive auth asks), secret storage holding them, and a new key backup.
 * Returns the recovery key, to show once.
 */
export async function setUpEncryption(client: MatrixClient, password: string): Promise<string> {
    const crypto = cryptoOf(client);
    const userId = client.getSafeUserId();
    await crypto.bootstrapCrossSigning({
        authUploadDeviceSigningKeys: async (makeRequest) => {
            // The first call has no auth: the server answers with its session, then the password.
            await makeRequest({
                type: "m.login.password",
                identifier: { type: "m.id.user", user: userId },
                password,
            });
        },
    });
    const generated = await crypto.createRecoveryKeyFromPassphrase();
    try {
        await crypto.bootstrapSecretStorage({
            createSecretStorageKey: async () => generated,
            setupNewKeyBackup: true,
        });
    } finally {
        forgetRecoveryKey();
    }
    if (!generated.encodedPrivateKey) throw new Error("No recovery key was made.");
    return generated.encodedPrivateKey;
}

/** Whether the account has cross-signing (set up at sign-up, or on an older device). */
export async function accountHasCrossSigning(client: MatrixClient): Promise<boolean> {
    return cryptoOf(client).userHasCrossSigningKeys(client.getSafeUserId(), true);
}

/** Whether this device is signed by the account's own cross-signing key. */
export async function thisDeviceIsVerified(client: MatrixClient): Promise<boolean> {
    const status = await cryptoOf(client).getDeviceVerificationStatus(client.getSafeUserId(), client.getDeviceId() ?? "");
    return status?.crossSigningVerified ?? false;
}

/**
 * A new device with the recovery key: fetch the cross-signing keys from secret storage,
 * sign this device with them, and take the backup key; then restore the backup (returns
 * how many message keys it held).
 */
export async function unlockWithRecoveryKey(client: MatrixClient, typed: string): Promise<number> {
    let key: Uint8Array<ArrayBuffer>;
    try {
        key = decodeRecoveryKey(typed.trim());
    } catch {
        throw new RecoveryKeyError("That is not a recovery key: check it and try again.");
    }
    const keyId = await client.secretStorage.getDefaultKeyId();
    const info = keyId ? await client.secretStorage.getKey(keyId) : null;
    if (!keyId || !info) throw new RecoveryKeyError("This account has no recovery key set up.");
    if (!(await client.secretStorage.checkKey(key, info[1] as SecretStorageKeyDescription))) {
        throw new RecoveryKeyError("That recovery key does not match this account.");
    }
    heldKey = { keyId, key };
    try {
        const crypto = cryptoOf(client);
        await crypto.bootstrapCrossSigning({});
        await crypto.loadSessionBackupPrivateKeyFromSecretStorage();
        return await restoreHistory(client, 0);
    } finally {
        forgetRecoveryKey();
    }
}

/**
 * Download the message keys in the backup and use the backup from now on. A device that
 * was just verified by emoji gets the backup key from the other device: wait for it.
 */
export async function restoreHistory(client: MatrixClient, waitMs = 30_000): Promise<number> {
    const crypto = cryptoOf(client);
    if (!(await crypto.getSessionBackupPrivateKey())) {
        await new Promise<void>((resolve, reject) => {
            const timer = window.setTimeout(() => {
                client.off(CryptoEvent.KeyBackupDecryptionKeyCached, cached);
                reject(new Error("The key to the key backup did not arrive: try the recovery key."));
            }, waitMs);
            const cached = (): void => {
                window.clearTimeout(timer);
                client.off(CryptoEvent.KeyBackupDecryptionKeyCached, cached);
                resolve();
            };
            client.on(CryptoEvent.KeyBackupDecryptionKeyCached, cached);
        });
    }
    await crypto.checkKeyBackupAndEnable();
    const result = await crypto.restoreKeyBackup();
    return result.imported;
}
