// The Edit tab: an image to change (img2img), a mask painted over it (inpainting: white =
// repaint), a border added on any side (outpainting) or its class changed (class transfer).
import { blobToDataUrl } from './api.js';

const $ = (id) => document.getElementById(id);
const MASK_COLOUR = 'rgb(230, 40, 60)'; // shown half transparent; only its alpha is the mask
const JUMPS = { jump_length: 'jump-length', jump_n_sample: 'jump-n-sample' }; // RePaint, default 10
const METHOD_NOTES = {
  repaint: 'RePaint: after each jump of that many steps, noise is added back and the steps are ' +
    'sampled again, that many passes, so that the new pixels fit the kept ones (slower).',
  blend: 'Blend: the kept pixels are put back, noised to the current step, after every step (fast).',
};

export class Editor {
  constructor() {
    this.image = $('edit-image');
    this.mask = $('edit-mask');
    this.stage = $('edit-stage');
    this.blob = null; // the image's own bytes, sent unchanged
    this.bitmap = null;
    this.painting = false;
    this.last = null;
    this.kind = ''; // the model's kind: the methods and class transfer depend on it
    for (const r of document.querySelectorAll('input[name="edit-mode"]'))
      r.addEventListener('change', () => this.layout());
    for (const id of ['out-left', 'out-top', 'out-right', 'out-bottom']) $(id).addEventListener('input', () => this.layout());
    $('inpaint-method').addEventListener('change', () => this.layout());
    $('strength').addEventListener('input', () => ($('strength-out').value = $('strength').value));
    $('brush-size').addEventListener('input', () => ($('brush-out').value = $('brush-size').value));
    $('mask-clear').addEventListener('click', () => this.clearMask());
    $('mask-invert').addEventListener('click', () => this.invertMask());
    $('edit-upload').addEventListener('change', (e) => {
      const f = e.target.files[0];
      const error = document.querySelector('[data-error-for="init_image"]');
      error.hidden = true;
      if (f)
        this.load(f).catch(() => {
          error.textContent = `${f.name}: the browser cannot read this image`;
          error.hidden = false;
        });
    });
    this.mask.addEventListener('pointerdown', (e) => this.down(e));
    this.mask.addEventListener('pointermove', (e) => this.move(e));
    for (const t of ['pointerup', 'pointercancel', 'pointerleave']) this.mask.addEventListener(t, () => this.up());
  }

  get mode() {
    return document.querySelector('input[name="edit-mode"]:checked').value;
  }

  get hasImage() {
    return this.bitmap !== null;
  }

  // The model's kind and classes, for the controls that depend on them.
  setModel(m) {
    this.kind = m?.kind || '';
    const classes = this.kind === 'class-conditional' ? m.classes || [] : [];
    const o = (c) => Object.assign(document.createElement('option'), { value: c, textContent: c });
    $('invert-from').replaceChildren(o(''), ...classes.map(o));
    $('invert-from').options[0].textContent = 'choose…';
    $('transfer-choice').hidden = !classes.length;
    if (!classes.length && this.mode === 'transfer')
      document.querySelector('input[name="edit-mode"][value="img2img"]').checked = true;
    this.layout();
  }

  outpaint() {
    return ['out-left', 'out-top', 'out-right', 'out-bottom'].map((id) => Math.max(0, Math.round(Number($(id).value) || 0)));
  }

  async load(blob) {
    this.bitmap = await createImageBitmap(blob);
    this.blob = blob;
    this.mask.width = this.bitmap.width;
    this.mask.height = this.bitmap.height;
    $('brush-size').max = String(Math.max(4, Math.round(Math.max(this.bitmap.width, this.bitmap.height) / 2)));
    $('brush-size').value = String(Math.max(1, Math.round(Math.max(this.bitmap.width, this.bitmap.height) / 8)));
    $('brush-out').value = $('brush-size').value;
    $('edit-hint').textContent = `Image: ${this.bitmap.width}×${this.bitmap.height}`;
    this.stage.hidden = false;
    this.layout();
  }

  // Draws the image (on a larger canvas when outpainting) and sizes both canvases for display.
  layout() {
    const mode = this.mode;
    $('mask-tools').hidden = mode !== 'inpaint';
    $('outpaint-tools').hidden = mode !== 'outpaint';
    $('transfer-tools').hidden = mode !== 'transfer';
    const method = $('inpaint-method').value;
    const masked = mode === 'inpaint' || mode === 'outpaint';
    $('repaint-tools').hidden = !masked || !this.kind || this.kind === 'stable-diffusion';
    for (const el of document.querySelectorAll('.repaint-only')) el.hidden = method !== 'repaint';
    $('method-note').textContent = METHOD_NOTES[method];
    this.mask.hidden = mode !== 'inpaint';
    if (!this.bitmap) return;
    const [l, t, r, b] = mode === 'outpaint' ? this.outpaint() : [0, 0, 0, 0];
    const w = this.bitmap.width + l + r;
    const h = this.bitmap.height + t + b;
    this.image.width = w;
    this.image.height = h;
    const ctx = this.image.getContext('2d');
    ctx.clearRect(0, 0, w, h);
    ctx.drawImage(this.bitmap, l, t);
    // Display: integer zoom for small images (pixelated), at most the panel's width.
    const room = Math.min(480, this.stage.clientWidth || 480);
    const long = Math.max(w, h);
    const zoom = long < room ? Math.max(1, Math.floor(room / long)) : room / long;
    for (const c of [this.image, this.mask]) {
      c.style.width = `${c.width * zoom}px`;
      c.style.height = `${c.height * zoom}px`;
    }
    this.mask.style.left = `${l * zoom}px`;
    this.mask.style.top = `${t * zoom}px`;
  }

  point(e) {
    const rect = this.mask.getBoundingClientRect();
    return {
      x: ((e.clientX - rect.left) * this.mask.width) / rect.width,
      y: ((e.clientY - rect.top) * this.mask.height) / rect.height,
    };
  }

  stroke(from, to) {
    const ctx = this.mask.getContext('2d');
    const erase = document.querySelector('input[name="brush"]:checked').value === 'erase';
    ctx.globalCompositeOperation = erase ? 'destination-out' : 'source-over';
    ctx.strokeStyle = MASK_COLOUR;
    ctx.lineWidth = Number($('brush-size').value);
    ctx.lineCap = ctx.lineJoin = 'round';
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
  }

  down(e) {
    if (!this.bitmap) return;
    this.painting = true;
    this.mask.setPointerCapture(e.pointerId);
    this.last = this.point(e);
    this.stroke(this.last, this.last);
  }

  move(e) {
    if (!this.painting) return;
    const p = this.point(e);
    this.stroke(this.last, p);
    this.last = p;
  }

  up() {
    this.painting = false;
  }

  clearMask() {
    this.mask.getContext('2d').clearRect(0, 0, this.mask.width, this.mask.height);
  }

  invertMask() {
    const ctx = this.mask.getContext('2d');
    const d = ctx.getImageData(0, 0, this.mask.width, this.mask.height);
    for (let i = 0; i < d.data.length; i += 4) {
      [d.data[i], d.data[i + 1], d.data[i + 2]] = [230, 40, 60];
      d.data[i + 3] = 255 - d.data[i + 3];
    }
    ctx.putImageData(d, 0, 0);
  }

  // The mask as a black-and-white PNG (white = repaint), or null when nothing is painted.
  async maskPng() {
    const { width, height } = this.mask;
    const src = this.mask.getContext('2d').getImageData(0, 0, width, height).data;
    const out = new ImageData(width, height);
    let any = false;
    for (let i = 0; i < src.length; i += 4) {
      const on = src[i + 3] >= 128 ? 255 : 0;
      any ||= on > 0;
      out.data[i] = out.data[i + 1] = out.data[i + 2] = on;
      out.data[i + 3] = 255;
    }
    if (!any) return null;
    const c = new OffscreenCanvas(width, height);
    c.getContext('2d').putImageData(out, 0, 0);
    return blobToDataUrl(await c.convertToBlob({ type: 'image/png' }));
  }

  // The edit fields of a request; throws {field, message} for what is missing.
  async fields() {
    if (!this.blob) throw { field: 'init_image', message: 'choose an image to edit first' };
    const f = { init_image: await blobToDataUrl(this.blob), strength: Number($('strength').value) };
    if (this.mode === 'inpaint') {
      const mask = await this.maskPng();
      if (!mask) throw { field: 'mask', message: 'paint the area to repaint on the image first' };
      f.mask = mask;
      const blur = Number($('mask-blur').value);
      if (blur) f.mask_blur = blur;
    } else if (this.mode === 'outpaint') {
      const o = this.outpaint();
      if (o.every((v) => v === 0)) throw { field: 'outpaint', message: 'extend at least one side' };
      f.outpaint = o;
    } else if (this.mode === 'transfer') {
      if (!$('invert-from').value) throw { field: 'invert_from', message: "choose the image's class" };
      f.invert_from = $('invert-from').value;
    }
    if (!$('repaint-tools').hidden) {
      if ($('inpaint-method').value === 'blend') f.inpaint_method = 'blend';
      else
        for (const [k, id] of Object.entries(JUMPS)) {
          const v = Number($(id).value);
          if ($(id).value !== '' && v !== 10) f[k] = v;
        }
    }
    return f;
  }

  // The edit settings saved with an image (and restored by "use these settings").
  settings() {
    const s = { edit_mode: this.mode, strength: Number($('strength').value) };
    if (this.mode === 'transfer') s.invert_from = $('invert-from').value;
    if (!$('repaint-tools').hidden) {
      s.inpaint_method = $('inpaint-method').value;
      for (const [k, id] of Object.entries(JUMPS)) s[k] = Number($(id).value);
    }
    return s;
  }

  // Restores edit settings: saved ones or request fields (PNG info); absent fields are kept.
  apply(s) {
    const mode = s.edit_mode || (s.invert_from ? 'transfer' : null);
    const radio = mode && document.querySelector(`input[name="edit-mode"][value="${mode}"]`);
    if (radio && !radio.closest('[hidden]')) radio.checked = true;
    if (s.strength !== undefined && s.strength !== null) {
      $('strength').value = s.strength;
      $('strength-out').value = $('strength').value;
    }
    if (s.invert_from && [...$('invert-from').options].some((o) => o.value === s.invert_from))
      $('invert-from').value = s.invert_from;
    if (s.inpaint_method) $('inpaint-method').value = s.inpaint_method;
    for (const [k, id] of Object.entries(JUMPS)) if (s[k]) $(id).value = s[k];
    this.layout();
  }
}
