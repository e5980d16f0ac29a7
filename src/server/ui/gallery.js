// The gallery: every generated image with its parameters, kept in IndexedDB so that it survives
// a reload. Images are the server's PNG bytes (with their A1111 "parameters" chunk), unchanged.

const DB = 'diffuse';
const STORE = 'images';

function open() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE, { keyPath: 'id', autoIncrement: true });
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function tx(mode, fn) {
  const db = await open();
  return new Promise((resolve, reject) => {
    const t = db.transaction(STORE, mode);
    const result = fn(t.objectStore(STORE));
    t.oncomplete = () => resolve(result.result);
    t.onerror = () => reject(t.error);
    t.onabort = () => reject(t.error);
  });
}

// item: {blob, seed, infotext, settings, model, width, height, created}
export const addItem = (item) => tx('readwrite', (s) => s.add(item));
export const allItems = () => tx('readonly', (s) => s.getAll());
export const deleteItem = (id) => tx('readwrite', (s) => s.delete(id));
export const clearItems = () => tx('readwrite', (s) => s.clear());

function button(label, aria, onClick) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = 'secondary small';
  b.textContent = label;
  b.setAttribute('aria-label', aria);
  b.addEventListener('click', onClick);
  return b;
}

// Renders the items, newest first. actions: {use(item), edit(item), remove(item), copied(ok)}.
export function render(list, items, actions) {
  for (const img of list.querySelectorAll('img')) URL.revokeObjectURL(img.src);
  list.replaceChildren();
  for (const item of [...items].reverse()) {
    const li = document.createElement('li');
    li.className = 'card';
    li.dataset.id = item.id;
    li.dataset.seed = item.seed;
    const url = URL.createObjectURL(item.blob);
    const img = document.createElement('img');
    img.src = url;
    img.alt = `${item.label || item.model}, seed ${item.seed}`;
    img.width = item.width;
    img.height = item.height;
    const caption = document.createElement('p');
    caption.className = 'caption';
    caption.textContent = `${item.label || item.model} · seed ${item.seed}`;
    const details = document.createElement('details');
    const summary = document.createElement('summary');
    summary.textContent = 'Parameters';
    const pre = document.createElement('pre');
    pre.className = 'params';
    pre.textContent = item.infotext;
    details.append(summary, pre);
    const download = document.createElement('a');
    download.href = url;
    download.download = `diffuse-${item.model}-${item.seed}.png`;
    download.textContent = 'Download';
    download.className = 'button secondary small';
    download.setAttribute('aria-label', `Download the PNG of seed ${item.seed}`);
    const bar = document.createElement('div');
    bar.className = 'card-actions';
    bar.append(
      button('Copy parameters', `Copy the parameters of seed ${item.seed}`, async () => {
        try {
          await navigator.clipboard.writeText(item.infotext);
          actions.copied(true);
        } catch {
          actions.copied(false);
        }
      }),
      button('Use settings', `Use the settings of seed ${item.seed}`, () => actions.use(item)),
      download,
      button('Send to edit', `Edit the image of seed ${item.seed}`, () => actions.edit(item)),
      button('Delete', `Delete the image of seed ${item.seed}`, () => actions.remove(item)),
    );
    li.append(img, caption, bar, details);
    list.append(li);
  }
}
