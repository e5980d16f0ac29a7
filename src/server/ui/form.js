// The request form: model, prompt or class, sampling settings and size; builds the native job
// request, restores saved settings and shows the server's errors next to their fields.

const $ = (id) => document.getElementById(id);

const KIND_NAMES = {
  'stable-diffusion': 'Stable Diffusion',
  'class-conditional': 'class-conditional',
  unconditional: 'unconditional',
};

// Request fields the server names in its errors -> the element the message goes under.
const FIELD_ALIASES = { class_label: 'class', guide_model: 'guidance', guide_unconditional: 'guidance', body: '' };

function option(value, text, title) {
  const o = document.createElement('option');
  o.value = value;
  o.textContent = text;
  if (title) o.title = title;
  return o;
}

const round = (v, step) => Math.max(step, Math.round(v / step) * step);

// SDXL's aspect buckets at 1024² pixels (width, height), scaled to a model's native size.
const SDXL_BUCKETS = [
  ['1:1', 1024, 1024],
  ['9:7', 1152, 896],
  ['7:9', 896, 1152],
  ['19:13', 1216, 832],
  ['13:19', 832, 1216],
  ['7:4', 1344, 768],
  ['4:7', 768, 1344],
];

const isXl = (m) => /^SDXL/.test(m?.architecture || '');
const isRefiner = (m) => /^SDXL refiner/.test(m?.architecture || '');

// The SDXL fieldset's inputs, as saved with each image.
const SDXL_INPUTS = {
  original_width: 'original-width',
  original_height: 'original-height',
  crop_top: 'crop-top',
  crop_left: 'crop-left',
  target_width: 'target-width',
  target_height: 'target-height',
  aesthetic_score: 'aesthetic-score',
  negative_aesthetic_score: 'negative-aesthetic-score',
};

// The SDXL settings of a native request ([0, 0] sizes = empty inputs).
function sdxlSettings(r) {
  const [oh, ow] = r.original_size || [0, 0];
  const [ct, cl] = r.crop_coords || [0, 0];
  const [th, tw] = r.target_size || [0, 0];
  const size = (v, other) => (v || other ? v : null);
  return {
    original_width: size(ow, oh),
    original_height: size(oh, ow),
    crop_top: ct || cl ? ct : null,
    crop_left: ct || cl ? cl : null,
    target_width: size(tw, th),
    target_height: size(th, tw),
    aesthetic_score: r.aesthetic_score ?? null,
    negative_aesthetic_score: r.negative_aesthetic_score ?? null,
    refiner: r.refiner || '',
    refiner_switch: r.refiner ? r.refiner_switch : undefined,
  };
}

export class Form {
  constructor() {
    this.list = null; // GET /api/v1/models
    this.onModel = () => {}; // called with the selected model
    $('size-preset').addEventListener('change', () => {
      const [w, h] = $('size-preset').value.split('x').map(Number);
      if (w && h) {
        $('width').value = w;
        $('height').value = h;
      }
    });
    $('seed-random').addEventListener('click', () => ($('seed').value = -1));
    $('model').addEventListener('change', () => this.selectModel($('model').value));
    $('refiner').addEventListener('change', () => this.showRefinerSwitch());
    $('refiner-switch').addEventListener('input', () => ($('refiner-switch-out').value = $('refiner-switch').value));
  }

  showRefinerSwitch() {
    $('refiner-switch-field').hidden = !$('refiner').value;
  }

  setup(list) {
    this.list = list;
    $('model').replaceChildren(
      ...list.models.map((m) => option(m.name, m.name, m.error || m.architecture || KIND_NAMES[m.kind])),
    );
    $('sampler').replaceChildren(
      option('', "the model's default"),
      ...list.samplers.map((s) => option(s.name, s.name, s.summary)),
    );
    $('schedule').replaceChildren(
      option('', "the sampler's default"),
      ...list.schedules.map((s) => option(s.name, s.name, s.summary)),
    );
    // SDXL refiners (not 9-channel inpainting ones: they cannot continue another model's latents)
    const refiners = list.models.filter((m) => m.architecture === 'SDXL refiner');
    $('refiner').replaceChildren(option('', 'none'), ...refiners.map((m) => option(m.name, m.name)));
    const current = list.models.find((m) => m.current) || list.models[0];
    if (current) this.selectModel(current.name);
  }

  get model() {
    return this.list?.models.find((m) => m.name === $('model').value);
  }

  // The model's recommended values: a request leaves a field out when it has this value, so
  // that the model's generation_config.json (with its guide model, if any) applies.
  defaults(m = this.model) {
    const d = m?.defaults || {};
    const sd = m?.kind === 'stable-diffusion';
    return {
      sampler: d.sampler || '',
      schedule: d.schedule || '',
      steps: d.steps ?? 20,
      guidance: d.guidance ?? (isXl(m) ? 5 : sd ? 7.5 : 1), // SDXL: diffusers' default, as the library's
      n: d.n ?? (sd ? 1 : 8),
      width: d.width || m?.width || 512,
      height: d.height || m?.height || 512,
    };
  }

  selectModel(name) {
    const m = this.list.models.find((x) => x.name === name);
    if (!m) return false;
    $('model').value = name;
    const sd = m.kind === 'stable-diffusion';
    const classes = m.kind === 'class-conditional' ? m.classes || [] : [];
    const kind = m.error
      ? `cannot load: ${m.error}`
      : [KIND_NAMES[m.kind] || m.kind, m.architecture].filter(Boolean).join(' · ');
    $('model-kind').textContent = classes.length ? `${kind} · ${classes.length} classes` : kind;
    $('prompt-field').hidden = !sd;
    $('negative-field').hidden = !sd;
    $('class-field').hidden = !classes.length;
    $('class').replaceChildren(option('', 'every class, in turn'), ...classes.map((c) => option(c, c)));
    const d = this.defaults(m);
    $('sampler').value = d.sampler;
    $('schedule').value = d.schedule;
    $('steps').value = d.steps;
    $('guidance').value = d.guidance;
    $('n').value = d.n;
    $('width').value = d.width;
    $('height').value = d.height;
    // Sides are multiples of the model's size step (8 for Stable Diffusion).
    const step = m.size_step || 8;
    for (const id of ['width', 'height']) Object.assign($(id), { step, min: step });
    const base = Math.min(d.width, d.height);
    const xl = isXl(m);
    const scale = Math.sqrt(d.width * d.height) / 1024;
    const seen = new Set();
    const presets = xl
      ? [
          ['native', d.width, d.height],
          ...SDXL_BUCKETS.map(([n, w, h]) => [n, round(w * scale, step), round(h * scale, step)]),
        ].filter(([, w, h]) => !seen.has(`${w}x${h}`) && seen.add(`${w}x${h}`))
      : sd
      ? [
          ['square', base, base],
          ['portrait 2:3', base, round(base * 1.5, step)],
          ['landscape 3:2', round(base * 1.5, step), base],
          ['wide 16:9', round((base * 16) / 9, step), base],
        ]
      : [
          ['native', m.width, m.height],
          ['2× native', m.width * 2, m.height * 2],
        ];
    $('size-preset').replaceChildren(...presets.map(([n, w, h]) => option(`${w}x${h}`, `${n} ${w}×${h}`)));
    $('size-note').textContent = xl
      ? `Multiples of 8; the presets are SDXL's aspect buckets at about ${d.width}×${d.height} pixels.`
      : sd
      ? 'Multiples of 8.'
      : `Multiples of ${step}; this model was trained on ${m.width}×${m.height} images.`;
    $('guide-note').textContent = m.defaults?.guide_unconditional !== undefined && !sd
      ? `Guidance ${d.guidance} is the model's recommendation and uses its guide model.`
      : '';
    this.showSdxl(m);
    this.clearErrors();
    this.onModel(m);
    return true;
  }

  // The SDXL fieldset: micro-conditioning for SDXL models; the aesthetic scores for refiners
  // (they take no target size); the refiner picker for base models.
  showSdxl(m) {
    const xl = isXl(m);
    const refiner = isRefiner(m);
    $('sdxl-fields').hidden = !xl;
    $('target-size-field').hidden = refiner;
    $('aesthetic-fields').hidden = !refiner;
    const canRefine = xl && !refiner && !/inpainting/.test(m.architecture) && $('refiner').options.length > 1;
    $('refiner-fields').hidden = !canRefine;
    if (!canRefine) $('refiner').value = '';
    this.showRefinerSwitch();
    $('sdxl-note').textContent = refiner
      ? 'A refiner refines an image: use it from Edit, or pick it as the refiner of an SDXL base model.'
      : 'Empty sizes are the output size. The refiner runs the steps after the switch.';
  }

  // The form's values, as saved with each image and restored by "use these settings".
  settings() {
    const num = (id) => ($(id).value === '' ? null : Number($(id).value));
    const m = this.model;
    return {
      model: m?.name,
      kind: m?.kind,
      prompt: $('prompt').value,
      negative_prompt: $('negative_prompt').value,
      class: $('class').value,
      sampler: $('sampler').value,
      schedule: $('schedule').value,
      steps: num('steps'),
      guidance: num('guidance'),
      seed: num('seed') ?? -1,
      n: num('n'),
      width: num('width'),
      height: num('height'),
      ...Object.fromEntries(Object.entries(SDXL_INPUTS).map(([k, id]) => [k, num(id)])),
      refiner: $('refiner').value,
      refiner_switch: Number($('refiner-switch').value),
    };
  }

  // The native job request of the current settings.
  request() {
    const s = this.settings();
    const d = this.defaults();
    const r = { model: s.model, seed: s.seed };
    if (s.kind === 'stable-diffusion') {
      r.prompt = s.prompt;
      if (s.negative_prompt) r.negative_prompt = s.negative_prompt;
      r.width = s.width;
      r.height = s.height;
    } else {
      if (s.kind === 'class-conditional' && s.class) r.class = s.class;
      if (s.width !== d.width || s.height !== d.height) [r.width, r.height] = [s.width, s.height];
    }
    for (const k of ['sampler', 'schedule', 'steps', 'guidance'])
      if (s[k] !== null && s[k] !== d[k]) r[k] = s[k];
    if (s.n !== null) r.n = s.n;
    const m = this.model;
    if (isXl(m)) {
      // [height, width] and [top, left]; an empty half is 0 (the server names a half-given size)
      const pair = (a, b) => (a === null && b === null ? null : [a ?? 0, b ?? 0]);
      r.original_size = pair(s.original_height, s.original_width);
      r.crop_coords = pair(s.crop_top, s.crop_left);
      if (isRefiner(m)) {
        r.aesthetic_score = s.aesthetic_score;
        r.negative_aesthetic_score = s.negative_aesthetic_score;
      } else {
        r.target_size = pair(s.target_height, s.target_width);
        if (s.refiner && !$('refiner-fields').hidden) [r.refiner, r.refiner_switch] = [s.refiner, s.refiner_switch];
      }
    }
    for (const k of Object.keys(r)) if (r[k] === null) delete r[k];
    return r;
  }

  // Restores saved settings (all fields but the model's are optional).
  apply(s) {
    if (s.model && this.model?.name !== s.model && !this.selectModel(s.model))
      this.showErrors([{ field: 'model', message: `this server has no model named '${s.model}'` }]);
    const set = (id, v) => {
      if (v !== undefined && v !== null) $(id).value = v;
    };
    set('prompt', s.prompt);
    set('negative_prompt', s.negative_prompt);
    if (s.class !== undefined && [...$('class').options].some((o) => o.value === s.class)) $('class').value = s.class;
    if (s.sampler && [...$('sampler').options].some((o) => o.value === s.sampler)) $('sampler').value = s.sampler;
    if (s.schedule !== undefined) $('schedule').value = s.schedule;
    set('steps', s.steps);
    set('guidance', s.guidance);
    set('seed', s.seed);
    set('n', s.n);
    set('width', s.width || null);
    set('height', s.height || null);
    for (const [k, id] of Object.entries(SDXL_INPUTS)) if (s[k] !== undefined) $(id).value = s[k] ?? '';
    if (s.refiner !== undefined && !$('refiner-fields').hidden) {
      if (!s.refiner || [...$('refiner').options].some((o) => o.value === s.refiner)) $('refiner').value = s.refiner;
      else this.showErrors([{ field: 'refiner', message: `this server has no refiner named '${s.refiner}'` }]);
    }
    if (s.refiner_switch) {
      $('refiner-switch').value = s.refiner_switch;
      $('refiner-switch-out').value = $('refiner-switch').value;
    }
    this.showRefinerSwitch();
  }

  // Settings from a request as /api/v1/infotext returns it (A1111 parameters text).
  applyRequest(r) {
    const m = this.list.models.find((x) => x.name === r.model);
    const label = r.class || (m?.kind === 'class-conditional' ? r.prompt : '');
    this.apply({
      model: r.model || undefined,
      prompt: m?.kind === 'class-conditional' ? undefined : r.prompt,
      negative_prompt: r.negative_prompt,
      class: label || undefined,
      sampler: r.sampler,
      schedule: r.schedule,
      steps: r.steps,
      guidance: r.guidance,
      seed: r.seed,
      width: r.width,
      height: r.height,
      ...sdxlSettings(r),
    });
  }

  clearErrors() {
    for (const p of document.querySelectorAll('[data-error-for], #general-error')) {
      p.hidden = true;
      p.textContent = '';
    }
    for (const el of document.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
  }

  // Shows each {field, message} under its field (or under the buttons); focuses the first.
  showErrors(errors) {
    let first = null;
    for (const { field, message } of errors) {
      const name = FIELD_ALIASES[field] ?? field;
      let p = name ? document.querySelector(`[data-error-for="${CSS.escape(name)}"]`) : null;
      if (!p || p.parentElement.closest('[hidden]')) p = $('general-error');
      p.textContent = p.id === 'general-error' && field ? `${field}: ${message}` : message;
      p.hidden = false;
      const input = p.closest('[data-field]')?.querySelector('input, select, textarea');
      if (input) {
        input.setAttribute('aria-invalid', 'true');
        p.id ||= `${name}-error`;
        input.setAttribute('aria-describedby', p.id);
      }
      first ||= input || p;
    }
    first?.focus?.();
  }
}
