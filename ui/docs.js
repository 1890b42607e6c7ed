// imagelb API docs: renders the OpenAPI document named by <body data-spec>
// (default /openapi.json) as a list of operations with their parameters,
// request and response schemas as collapsible trees, and a "Try it" form per
// operation that sends the request to this server. No dependencies, nothing
// loaded from elsewhere, no innerHTML: every string from the document or a
// response is put in the page as text.
"use strict";

const METHODS = ["get", "head", "post", "put", "patch", "delete", "options"];
const MAX_SHOWN = 200000; // characters of a response body shown at most
let spec = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v; else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false || c === "") continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// ---------------------------------------------------------------- references

// resolve follows a local JSON pointer such as "#/components/schemas/Service".
function resolve(ref) {
  if (typeof ref !== "string" || !ref.startsWith("#/")) return null;
  let v = spec;
  for (const raw of ref.slice(2).split("/")) {
    const part = decodeURIComponent(raw).replace(/~1/g, "/").replace(/~0/g, "~");
    if (v === null || typeof v !== "object" || !(part in v)) return null;
    v = v[part];
  }
  return v;
}

// deref follows $ref chains; the name is that of the last component named.
function deref(obj) {
  let name = null;
  for (let i = 0; obj && typeof obj === "object" && obj.$ref && i < 32; i++) {
    const target = resolve(obj.$ref);
    name = obj.$ref.split("/").pop();
    const siblings = { ...obj };
    delete siblings.$ref;
    obj = target ? { ...target, ...siblings } : { description: "unresolved reference " + obj.$ref };
  }
  return [obj || {}, name];
}

// flatten resolves a schema and merges its allOf parts into one view.
function flatten(s, depth = 0) {
  const [base, refName] = deref(s);
  if (!Array.isArray(base.allOf) || depth > 16) return { schema: base, name: refName };
  const out = { ...base, properties: { ...(base.properties || {}) }, required: [...(base.required || [])] };
  delete out.allOf;
  const parts = [];
  for (const part of base.allOf) {
    const f = flatten(part, depth + 1);
    if (f.name) parts.push(f.name);
    for (const [k, v] of Object.entries(f.schema)) {
      if (k === "properties") Object.assign(out.properties, v);
      else if (k === "required") out.required.push(...v);
      else if (!(k in out)) out[k] = v;
    }
  }
  if (!Object.keys(out.properties).length) delete out.properties;
  const alone = parts.length === 1 && !base.properties ? parts[0] : null;
  return { schema: out, name: refName || alone };
}

// ---------------------------------------------------------------- schema trees

const types = (sc) => (Array.isArray(sc.type) ? sc.type : sc.type ? [sc.type] : []);

function typeText(sc) {
  if (sc.oneOf || sc.anyOf) return "one of";
  const t = types(sc);
  if (t.includes("array") && sc.items) {
    const f = flatten(sc.items);
    return t.map((x) => (x === "array" ? "array of " + (f.name || typeText(f.schema)) : x)).join(" | ");
  }
  if (t.length) return t.join(" | ");
  return sc.properties ? "object" : "any";
}

function typeBadge(f) {
  return el("span", { class: "stype" }, f.name ? el("b", {}, f.name) : null, f.name ? " " : null, typeText(f.schema));
}

function constraints(sc) {
  const c = [];
  const j = (v) => JSON.stringify(v);
  if (Array.isArray(sc.enum)) c.push(sc.enum.map(j).join(" | "));
  if ("const" in sc) c.push("= " + j(sc.const));
  if (sc.format) c.push(sc.format);
  if (sc.minimum !== undefined && sc.maximum !== undefined) c.push(sc.minimum + "\u2013" + sc.maximum);
  else if (sc.minimum !== undefined) c.push("\u2265 " + sc.minimum);
  else if (sc.maximum !== undefined) c.push("\u2264 " + sc.maximum);
  if (sc.minLength !== undefined || sc.maxLength !== undefined) c.push("length " + (sc.minLength ?? 0) + "\u2013" + (sc.maxLength ?? "\u221e"));
  if (sc.pattern) c.push("pattern " + sc.pattern);
  if (sc.minProperties) c.push("at least " + sc.minProperties + " field" + (sc.minProperties > 1 ? "s" : ""));
  if ("default" in sc) c.push("default " + j(sc.default));
  if (Array.isArray(sc.examples) && sc.examples.length) c.push("e.g. " + sc.examples.map(j).join(", "));
  return c.map((t) => el("span", { class: t.length > 40 ? "constraint wrap" : "constraint" }, t));
}

// children returns the nested fields of a schema, or null for a leaf.
function children(sc, name, depth, ancestors) {
  if (name && ancestors.includes(name)) return el("div", { class: "pdesc" }, "(recursive: " + name + ")");
  if (depth > 12) return null;
  const anc = name ? [...ancestors, name] : ancestors;
  if (sc.properties) {
    const req = new Set(sc.required || []);
    return el("ul", { class: "fields" },
      Object.entries(sc.properties).map(([k, v]) => fieldNode(k, v, req.has(k), depth, anc)));
  }
  const alts = sc.oneOf || sc.anyOf;
  if (Array.isArray(alts)) {
    return el("ul", { class: "fields" }, alts.map((a, i) => fieldNode("option " + (i + 1), a, false, depth, anc, true)));
  }
  if (types(sc).includes("array") && sc.items) {
    const f = flatten(sc.items);
    return children(f.schema, f.name, depth, anc);
  }
  return null;
}

function fieldNode(label, s, required, depth, ancestors, alt) {
  const f = flatten(s);
  const sc = f.schema;
  const head = [el("span", { class: alt ? "pname alt" : "pname" }, label),
    required ? el("span", { class: "req", title: "required" }, "required") : null,
    typeBadge(f), constraints(sc)];
  const desc = sc.description ? el("div", { class: "pdesc" }, sc.description) : null;
  const kids = children(sc, f.name, depth + 1, ancestors);
  if (!kids) return el("li", { class: "field" }, el("div", { class: "fhead" }, head), desc);
  return el("li", { class: "field" }, el("details", {}, el("summary", { class: "fhead" }, head), desc, kids));
}

// schemaBlock renders a whole schema: its type, description and fields.
function schemaBlock(s) {
  const f = flatten(s);
  return el("div", { class: "schema" },
    el("div", { class: "fhead" }, typeBadge(f), constraints(f.schema)),
    f.schema.description ? el("div", { class: "pdesc" }, f.schema.description) : null,
    children(f.schema, f.name, 0, []));
}

// sample builds a request body skeleton from a schema (required fields only).
function sample(s, depth = 0) {
  const sc = flatten(s).schema;
  if (depth > 6) return null;
  if (Array.isArray(sc.examples) && sc.examples.length) return sc.examples[0];
  if ("default" in sc) return sc.default;
  if (Array.isArray(sc.enum)) return sc.enum[0];
  if (sc.oneOf || sc.anyOf) return sample((sc.oneOf || sc.anyOf)[0], depth + 1);
  const t = types(sc).filter((x) => x !== "null")[0] || (sc.properties ? "object" : "string");
  if (t === "object") {
    const o = {};
    for (const k of sc.required || []) o[k] = sc.properties && sc.properties[k] ? sample(sc.properties[k], depth + 1) : null;
    return o;
  }
  if (t === "array") return sc.items ? [sample(sc.items, depth + 1)] : [];
  if (t === "integer" || t === "number") return sc.minimum ?? 0;
  if (t === "boolean") return false;
  return "string";
}

// ---------------------------------------------------------------- operations

const slug = (s) => String(s).replace(/[^A-Za-z0-9_-]+/g, "-");

function paragraphs(text, cls) {
  if (!text) return null;
  return el("div", { class: cls }, String(text).split(/\n\s*\n/).map((p) => el("p", {}, p)));
}

// opParameters merges the path item's parameters with the operation's.
function opParameters(item, op) {
  const byKey = new Map();
  for (const p of [...(item.parameters || []), ...(op.parameters || [])]) {
    const [v] = deref(p);
    byKey.set(v.in + ":" + v.name, v);
  }
  return [...byKey.values()];
}

function paramTable(params) {
  if (!params.length) return null;
  return el("div", { class: "block" }, el("h4", {}, "Parameters"),
    el("table", { class: "params" },
      el("thead", {}, el("tr", {}, el("th", {}, "name"), el("th", {}, "in"), el("th", {}, "type"), el("th", {}, "description"))),
      el("tbody", {}, params.map((p) => {
        const f = flatten(p.schema || {});
        return el("tr", {},
          el("td", {}, el("span", { class: "pname" }, p.name), p.required ? el("span", { class: "req" }, "required") : null),
          el("td", {}, p.in),
          el("td", {}, typeBadge(f), constraints(f.schema)),
          el("td", {}, p.description || f.schema.description || ""));
      }))));
}

function contentBlocks(content) {
  return Object.entries(content || {}).map(([type, media]) => {
    const examples = Object.entries(media.examples || {}).map(([name, ex]) => {
      const [v] = deref(ex);
      return el("details", { class: "example" }, el("summary", {}, "example: " + (v.summary || name)),
        el("pre", {}, JSON.stringify(v.value, null, 2)));
    });
    if (media.example !== undefined) examples.push(el("details", { class: "example" }, el("summary", {}, "example"), el("pre", {}, JSON.stringify(media.example, null, 2))));
    return el("div", { class: "content" }, el("span", { class: "ctype" }, type),
      media.schema ? schemaBlock(media.schema) : el("span", { class: "pdesc" }, " any content"), examples);
  });
}

function requestBlock(op) {
  if (!op.requestBody) return null;
  const [rb] = deref(op.requestBody);
  return el("div", { class: "block" }, el("h4", {}, "Request body", rb.required ? el("span", { class: "req" }, "required") : null),
    rb.description ? el("div", { class: "pdesc" }, rb.description) : null, contentBlocks(rb.content));
}

function statusClass(code) {
  return code === "default" ? "sdefault" : "s" + String(code)[0] + "xx";
}

function responsesBlock(op) {
  const codes = Object.keys(op.responses || {}).sort((a, b) => (a === "default") - (b === "default") || a.localeCompare(b));
  return el("div", { class: "block" }, el("h4", {}, "Responses"), codes.map((code) => {
    const [r, name] = deref(op.responses[code]);
    const headers = Object.entries(r.headers || {}).map(([h, hv]) => el("div", { class: "pdesc" }, "header ", el("code", {}, h), ": ", deref(hv)[0].description || ""));
    const d = el("details", { class: "response" },
      el("summary", {}, el("span", { class: "status " + statusClass(code) }, code), " ", r.description || "", name ? el("span", { class: "rname" }, name) : null),
      headers, contentBlocks(r.content));
    if (code.startsWith("2")) d.open = true;
    return d;
  }));
}

// ---------------------------------------------------------------- try it

function tryIt(path, method, params, op) {
  const fields = params.filter((p) => ["path", "query", "header"].includes(p.in)).map((p) => {
    const sc = flatten(p.schema || {}).schema;
    let input;
    if (Array.isArray(sc.enum)) {
      input = el("select", {}, el("option", { value: "" }, ""), sc.enum.map((v) => el("option", { value: String(v) }, String(v))));
    } else {
      input = el("input", { type: "text", placeholder: p["x-imagelb-rest-of-path"] ? "a/b/c" : typeText(sc) });
    }
    return { p, input, row: el("label", { class: "tfield" }, el("span", {}, p.name, " (" + p.in + ")", p.required ? " *" : ""), input) };
  });
  let bodyArea = null, ctype = null, exampleSelect = null;
  if (op.requestBody) {
    const [rb] = deref(op.requestBody);
    const [type, media] = Object.entries(rb.content || { "application/json": {} })[0];
    const json = /json/.test(type);
    ctype = el("input", { type: "text", value: type === "*/*" ? "application/json" : type, "aria-label": "Content-Type" });
    const exs = Object.entries(media.examples || {}).map(([n, ex]) => [n, deref(ex)[0]]);
    const show = (v) => (v === undefined ? "" : typeof v === "string" && !json ? v : JSON.stringify(v, null, 2));
    bodyArea = el("textarea", { rows: "8", spellcheck: "false", "aria-label": "request body" });
    bodyArea.value = exs.length ? show(exs[0][1].value) : media.schema && json ? show(sample(media.schema)) : "";
    if (exs.length > 1) {
      exampleSelect = el("select", { "aria-label": "example" }, exs.map(([n, ex]) => el("option", { value: n }, ex.summary || n)));
      exampleSelect.addEventListener("change", () => {
        const found = exs.find(([n]) => n === exampleSelect.value);
        if (found) bodyArea.value = show(found[1].value);
      });
    }
  }
  const result = el("div", { class: "result", hidden: true });
  const send = el("button", { type: "submit" }, "Send " + method.toUpperCase());
  const form = el("form", { class: "try" }, fields.map((f) => f.row),
    bodyArea ? el("div", { class: "tbody" }, el("div", { class: "tfield" }, el("span", {}, "body, Content-Type "), ctype, exampleSelect), bodyArea) : null,
    el("div", {}, send), result);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    result.hidden = false;
    result.replaceChildren();
    const problem = (msg) => result.append(el("div", { class: "error" }, msg));
    let url = basePath() + path;
    const query = new URLSearchParams();
    const headers = {};
    for (const { p, input } of fields) {
      const v = input.value.trim();
      if (!v) {
        if (p.required) return problem("Fill in " + p.name + ".");
        continue;
      }
      if (p.in === "path") {
        const enc = p["x-imagelb-rest-of-path"] ? v.replace(/^\/+/, "").split("/").map(encodeURIComponent).join("/") : encodeURIComponent(v);
        url = url.split("{" + p.name + "}").join(enc);
      } else if (p.in === "query") query.append(p.name, v);
      else headers[p.name] = v;
    }
    if (String(query)) url += "?" + query;
    const init = { method: method.toUpperCase(), headers, credentials: "same-origin" };
    if (bodyArea && bodyArea.value.trim() && !["GET", "HEAD"].includes(init.method)) {
      if (/json/.test(ctype.value)) {
        try { JSON.parse(bodyArea.value); } catch (err) { return problem("The body is not valid JSON: " + err.message); }
      }
      headers["Content-Type"] = ctype.value;
      init.body = bodyArea.value;
    }
    send.disabled = true;
    const started = performance.now();
    try {
      const resp = await fetch(url, init);
      const text = await resp.text();
      showResponse(result, init.method, url, resp, text, performance.now() - started);
    } catch (err) {
      problem(init.method + " " + url + " failed: " + err.message);
    } finally {
      send.disabled = false;
    }
  });
  return el("details", { class: "block tryit" }, el("summary", {}, "Try it"), form);
}

function showResponse(box, method, url, resp, text, ms) {
  let body = text;
  if (/json/.test(resp.headers.get("Content-Type") || "")) {
    try { body = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* show it as sent */ }
  }
  if (body.length > MAX_SHOWN) body = body.slice(0, MAX_SHOWN) + "\n\u2026 (" + text.length + " characters in all)";
  const headers = [];
  resp.headers.forEach((v, k) => headers.push(k + ": " + v));
  box.append(
    el("div", { class: "rline" }, el("span", { class: "status " + statusClass(resp.status) }, String(resp.status || "?")),
      " ", resp.statusText || "", el("span", { class: "muted" }, " " + method + " " + url + " \u00b7 " + Math.round(ms) + " ms")),
    el("h5", {}, "Headers"), el("pre", {}, headers.sort().join("\n")),
    el("h5", {}, "Body"), el("pre", {}, body || "(empty)"));
}

function basePath() {
  const url = (spec.servers && spec.servers[0] && spec.servers[0].url) || "/";
  let p = url;
  try { p = new URL(url, location.href).pathname; } catch (_) { /* keep it */ }
  return p.replace(/\/+$/, "");
}

// ---------------------------------------------------------------- page

function operationNode(path, method, item, op) {
  const params = opParameters(item, op);
  const id = "op-" + slug(op.operationId || method + "-" + path);
  return el("details", { class: "op m-" + method, id, "data-filter": (method + " " + path + " " + (op.summary || "")).toLowerCase() },
    el("summary", {}, el("span", { class: "method" }, method.toUpperCase()), el("code", { class: "path" }, path),
      el("span", { class: "summary" }, op.summary || ""), op.deprecated ? el("span", { class: "req" }, "deprecated") : null),
    el("div", { class: "opbody" },
      paragraphs(op.description, "description"),
      op.operationId ? el("div", { class: "muted" }, "operationId: ", el("code", {}, op.operationId)) : null,
      paramTable(params), requestBlock(op), responsesBlock(op), tryIt(path, method, params, op)));
}

function render() {
  const info = spec.info || {};
  document.title = (info.title || "API") + " docs";
  document.getElementById("title").textContent = info.title || "API";
  document.getElementById("version").textContent = (info.version ? "v" + info.version : "") + (spec.openapi ? " \u00b7 OpenAPI " + spec.openapi : "");
  document.getElementById("description").replaceChildren(paragraphs(info.description, "description") || "");

  // group the operations by their first tag, in the document's tag order
  const groups = new Map((spec.tags || []).map((t) => [t.name, { tag: t, ops: [] }]));
  for (const [path, item] of Object.entries(spec.paths || {})) {
    for (const method of METHODS) {
      const op = item[method];
      if (!op) continue;
      const name = (op.tags && op.tags[0]) || "other";
      if (!groups.has(name)) groups.set(name, { tag: { name }, ops: [] });
      groups.get(name).ops.push(operationNode(path, method, item, op));
    }
  }
  const main = document.getElementById("operations");
  const toc = document.getElementById("toc");
  main.replaceChildren();
  toc.replaceChildren();
  for (const { tag, ops } of groups.values()) {
    if (!ops.length) continue;
    const id = "tag-" + slug(tag.name);
    toc.append(el("a", { href: "#" + id }, tag.name, el("span", { class: "count" }, String(ops.length))));
    main.append(el("section", { class: "tag", id }, el("h2", {}, tag.name), tag.description ? el("p", { class: "pdesc" }, tag.description) : null, ops));
  }
  const schemas = (spec.components && spec.components.schemas) || {};
  const box = document.getElementById("schemas");
  box.replaceChildren(el("h2", {}, "Schemas"), Object.keys(schemas).map((name) =>
    el("details", { class: "op component", id: "schema-" + slug(name) },
      el("summary", {}, el("code", { class: "path" }, name)),
      el("div", { class: "opbody" }, schemaBlock({ $ref: "#/components/schemas/" + name })))));
  box.hidden = !Object.keys(schemas).length;
  if (!box.hidden) toc.append(el("a", { href: "#schemas" }, "schemas", el("span", { class: "count" }, String(Object.keys(schemas).length))));
  openHash();
}

function openHash() {
  const target = location.hash && document.getElementById(decodeURIComponent(location.hash.slice(1)));
  if (!target) return;
  if (target.tagName === "DETAILS") target.open = true;
  target.scrollIntoView();
}

function setupToolbar() {
  const filter = document.getElementById("filter");
  filter.addEventListener("input", () => {
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    for (const op of document.querySelectorAll("#operations details.op")) {
      op.hidden = !words.every((w) => op.dataset.filter.includes(w));
    }
    for (const sec of document.querySelectorAll("#operations section.tag")) {
      sec.hidden = !sec.querySelector("details.op:not([hidden])");
    }
  });
  const all = (open) => () => { for (const d of document.querySelectorAll("#operations details.op")) d.open = open; };
  document.getElementById("expand").addEventListener("click", all(true));
  document.getElementById("collapse").addEventListener("click", all(false));
  window.addEventListener("hashchange", openHash);
}

async function load() {
  const url = document.body.dataset.spec || "/openapi.json";
  document.getElementById("spec-link").setAttribute("href", url);
  setupToolbar();
  try {
    const resp = await fetch(url, { headers: { Accept: "application/json" } });
    if (!resp.ok) throw new Error(url + " answered " + resp.status);
    spec = await resp.json();
    render();
  } catch (err) {
    const box = document.getElementById("error");
    box.textContent = "Could not load the API description: " + err.message;
    box.hidden = false;
    document.getElementById("operations").replaceChildren();
  }
}

load();
