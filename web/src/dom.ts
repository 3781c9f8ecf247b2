// A small element builder: the app renders plain DOM, no framework (docs/web-client.md).

type Child = Node | string | null | undefined | false;
type Attr = string | number | boolean | null | undefined | ((event: Event) => void);

/** `<tag attrs...>children</tag>`: `onclick` style keys add listeners, `true` sets a bare
 * attribute, false/null/undefined leave it out. Text children are escaped by the DOM. */
export function h<K extends keyof HTMLElementTagNameMap>(
    tag: K,
    attrs: Record<string, Attr> = {},
    ...children: Child[]
): HTMLElementTagNameMap[K] {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
        if (typeof value === "function") el.addEventListener(name.slice(2), value);
        else if (value === true) el.setAttribute(name, "");
        else if (value !== false && value !== null && value !== undefined) el.setAttribute(name, String(value));
    }
    for (const child of children) {
        if (child !== null && child !== undefined && child !== false) el.append(child);
    }
    return el;
}

/** Replace everything in `parent` with `children`. */
export function show(parent: Element, ...children: Child[]): void {
    parent.replaceChildren(...children.filter((c): c is Node | string => c !== null && c !== undefined && c !== false));
}
