// My devices through matrix-js-sdk: the list, renaming, and logging another one out, which
// the server guards with user-interactive auth (the account's password).

import type { IMyDevice, MatrixClient } from "matrix-js-sdk";

import { AuthError } from "./http";

/** This device first, then the others, most recently seen first. */
export async function myDevices(client: MatrixClient): Promise<IMyDevice[]> {
    const { devices } = await client.getDevices();
    const mine = client.getDeviceId();
    const seen = (d: IMyDevice): number => (d.device_id === mine ? Infinity : (d.last_seen_ts ?? 0));
    return devices.sort((a, b) => seen(b) - seen(a));
}

export async function renameDevice(client: MatrixClient, deviceId: string, name: string): Promise<void> {
    await client.setDeviceDetails(deviceId, { display_name: name });
}

interface UiaError {
    httpStatus?: number;
    data?: { session?: unknown; flows?: unknown; errcode?: unknown; error?: unknown };
}

/** Log `deviceId` out: learn the UIA session, then prove it with the password. */
export async function logOutDevice(client: MatrixClient, deviceId: string, password: string): Promise<void> {
    let session: string | undefined;
    try {
        await client.deleteDevice(deviceId);
        return;
    } catch (e) {
        const data = (e as UiaError).data;
        if ((e as UiaError).httpStatus !== 401 || !data?.flows) throw e;
        session = typeof data.session === "string" ? data.session : undefined;
    }
    try {
        await client.deleteDevice(deviceId, {
            type: "m.login.password",
            identifier: { type: "m.id.user", user: client.getUserId() ?? "" },
            password,
            session,
        });
    } catch (e) {
        const data = (e as UiaError).data;
        if ((e as UiaError).httpStatus === 401 && data?.errcode === "M_FORBIDDEN") {
            throw new AuthError("Wrong password.");
        }
        throw new AuthError(typeof data?.error === "string" ? data.error : "Could not log that device out.");
    }
}
