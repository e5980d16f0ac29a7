// The web UI of `diffuse serve`: generate, edit, PNG info and a gallery kept in the browser.
import * as api from './api.js';
import { Editor } from './editor.js';
import { Form } from './form.js';
import * as gallery from './gallery.js';
import { pngParameters } from './pnginfo.js';

const $ = (id) => document.getElementById(id);
const form = new Form();
const editor = new Editor();
form.onModel = (m) => editor.setModel(m);
let job = null; // the running job's id
let lastSeed = null;
let pendingParams = null; // PNG info: the request read from the dropped PNG

function status(text) {
  $('status').textContent = text;
}

function duration(s) {
  if (!(s >= 0)) return '';
  if (s < 60) return `${Math.ceil(s)} s`;
  return `${Math.floor(s / 60)} min ${Math.ceil(s % 60)} s`;
}

// ---- tabs -----------------------------------------------------------------------------------

const TABS = ['generate', 'edit', 'pnginfo'];

function activeTab() {
  return TABS.find((t) => $(`tab-${t}`).getAttribute('aria-selected') === 'true');
}

function selectTab(name, focus = false) {
  for (const t of TABS) {
    const on = t === name;
    $(`tab-${t}`).setAttribute('aria-selected', String(on));
    $(`tab-${t}`).tabIndex = on ? 0 : -1;
    $(`panel-${t}`).hidden = !on;
  }
  $('common').hidden = name === 'pnginfo';
  $('generate').firstChild.textContent = name === 'edit' ? 'Edit ' : 'Generate ';
  if (focus) $(`tab-${name}`).focus();
}

for (const t of TABS) {
  $(`tab-${t}`).addEventListener('click', () => selectTab(t));
  $(`tab-${t}`).addEventListener('keydown', (e) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
    if (step) selectTab(TABS[(TABS.indexOf(t) + step + TABS.length) % TABS.length], true);
  });
}

// ---- gallery --------------------------------------------------------------------------------

async function refreshGallery() {
  const items = await gallery.allItems();
  $('gallery-count').textContent = String(items.length);
  gallery.render($('gallery'), items, {
    use: (item) => {
      form.apply(item.settings);
      editor.apply(item.settings);
      selectTab('generate');
      status(`Settings of seed ${item.seed} restored`);
    },
    edit: async (item) => {
      form.clearErrors();
      form.apply({ ...item.settings, seed: undefined });
      await editor.load(item.blob);
      selectTab('edit');
      status(`Editing seed ${item.seed}`);
    },
    remove: async (item) => {
      await gallery.deleteItem(item.id);
      await refreshGallery();
    },
    copied: (ok) => status(ok ? 'Parameters copied' : 'The browser did not allow copying'),
  });
}

// One gallery item per image of a finished job.
async function keep(result, settings) {
  for (let i = 0; i < result.images.length; i++) {
    const blob = api.base64ToBlob(result.images[i]);
    const bitmap = await createImageBitmap(blob);
    const infotext = result.infotexts[i] || '';
    const cls = /(?:^|, )Class: ([^,\n]+)/m.exec(infotext)?.[1];
    const label = cls || (settings.kind === 'stable-diffusion' ? settings.prompt.slice(0, 40) : '') || settings.model;
    await gallery.addItem({
      blob,
      seed: result.seeds[i],
      infotext,
      model: settings.model,
      label,
      width: bitmap.width,
      height: bitmap.height,
      created: Date.now(),
      settings: { ...settings, seed: result.seeds[i], class: cls ?? settings.class },
    });
    bitmap.close();
  }
  if (result.seeds.length) lastSeed = result.seeds[0];
  await refreshGallery();
}

// ---- running a job ---------------------------------------------------------------------------

function busy(on) {
  $('generate').disabled = on;
  $('cancel').disabled = !on;
  document.body.classList.toggle('busy', on);
}

function progress(ev) {
  if (ev.state === 'queued') {
    status('Waiting in the queue…');
    return;
  }
  if (ev.total > 0) {
    $('progress').max = ev.total;
    $('progress').value = ev.step;
    const eta = ev.step > 0 ? ` · ETA ${duration(ev.eta_s)}` : '';
    status(`Step ${ev.step}/${ev.total}${eta}`);
  } else {
    status('Loading the model…');
  }
  if (ev.preview) {
    $('preview').src = ev.preview;
    $('preview').hidden = false;
    $('preview-caption').textContent = `Preview at step ${ev.step}/${ev.total}`;
  }
}

// Runs the form's request; counts finished runs in <body data-runs>.
async function run() {
  if (job !== null || !form.model) return;
  job = '';
  try {
    await runJob();
  } finally {
    job = null;
    busy(false);
    document.body.dataset.runs = String(Number(document.body.dataset.runs || 0) + 1);
  }
}

async function runJob() {
  form.clearErrors();
  let request;
  try {
    request = form.request();
    if (activeTab() === 'edit') {
      // The size is the image's (plus the outpainted border).
      delete request.width;
      delete request.height;
      Object.assign(request, await editor.fields());
    }
  } catch (e) {
    if (e && e.field) return form.showErrors([e]);
    throw e;
  }
  const settings = activeTab() === 'edit' ? { ...form.settings(), ...editor.settings() } : form.settings();
  busy(true);
  $('progress').value = 0;
  status('Sending…');
  const t0 = performance.now();
  try {
    const submitted = await api.submitJob(request);
    job = submitted.id;
    const end = await api.followJob(job, (type, ev) => type === 'progress' && progress(ev));
    const ev = end.event;
    if (end.type === 'done') {
      $('progress').value = $('progress').max;
      await keep(ev.result, settings);
      const n = ev.result.images.length;
      status(`Done: ${n} image${n === 1 ? '' : 's'} in ${duration((performance.now() - t0) / 1000)}`);
    } else if (end.type === 'cancelled') {
      status(`Cancelled at step ${ev.step}/${ev.total}`);
    } else {
      status('Failed');
      form.showErrors([ev.error || { field: '', message: 'the job failed' }]);
    }
  } catch (e) {
    status('Failed');
    if (e instanceof api.ApiError) form.showErrors(e.errors);
    else form.showErrors([{ field: '', message: String(e.message || e) }]);
  }
}

async function cancel() {
  if (!job) return;
  status('Cancelling…');
  try {
    await api.cancelJob(job);
  } catch (e) {
    form.showErrors(e.errors || [{ field: '', message: String(e) }]);
  }
}

// ---- PNG info --------------------------------------------------------------------------------

async function readPng(file) {
  $('pnginfo-error').hidden = true;
  $('pnginfo-apply').hidden = true;
  $('pnginfo-text').textContent = '';
  pendingParams = null;
  try {
    const text = await pngParameters(await file.arrayBuffer());
    if (!text) throw new Error(`${file.name} carries no generation parameters`);
    $('pnginfo-text').textContent = text;
    pendingParams = await api.parseInfotext(text);
    $('pnginfo-apply').hidden = false;
  } catch (e) {
    $('pnginfo-error').textContent = e.message;
    $('pnginfo-error').hidden = false;
  }
}

const drop = $('drop');
drop.addEventListener('dragover', (e) => {
  e.preventDefault();
  drop.classList.add('over');
});
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  const f = e.dataTransfer.files[0];
  if (f) readPng(f);
});
$('pnginfo-file').addEventListener('change', (e) => e.target.files[0] && readPng(e.target.files[0]));
$('pnginfo-apply').addEventListener('click', () => {
  if (!pendingParams) return;
  form.applyRequest(pendingParams);
  editor.apply(pendingParams);
  selectTab('generate');
  status('Parameters applied');
});

// ---- wiring ----------------------------------------------------------------------------------

$('form').addEventListener('submit', (e) => {
  e.preventDefault();
  run();
});
$('cancel').addEventListener('click', cancel);
$('seed-reuse').addEventListener('click', () => {
  if (lastSeed !== null) $('seed').value = lastSeed;
});
document.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey) && activeTab() !== 'pnginfo') {
    e.preventDefault();
    run();
  }
});
$('gallery-clear').addEventListener('click', async () => {
  if (!confirm('Delete every image in the gallery?')) return;
  await gallery.clearItems();
  await refreshGallery();
});

const dialog = $('token-dialog');
function askToken() {
  $('token-input').value = api.getToken();
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener(
      'close',
      () => {
        const save = dialog.returnValue === 'save' && $('token-input').value !== '';
        if (save) api.setToken($('token-input').value);
        resolve(save);
      },
      { once: true },
    );
  });
}
api.onTokenNeeded(askToken);
$('token-button').addEventListener('click', async () => {
  if (await askToken()) init();
});

async function init() {
  try {
    form.setup(await api.models());
    status('Ready');
  } catch (e) {
    status('The server could not list its models');
    form.showErrors(e.errors || [{ field: '', message: String(e.message || e) }]);
  }
}

selectTab('generate');
editor.layout();
refreshGallery();
init();
