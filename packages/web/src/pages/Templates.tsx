/** Templates: named VM shapes; operators create them, make VMs from them and delete them. */
import { type FormEvent, useState } from 'react';
import { ApiError, api, fieldErrors } from '../api';
import { formatMib, formatTime, timeAgo, useNow } from '../format';
import { followOperation } from '../operation-toast';
import { useCan, useImages, useNetworks, useTemplates } from '../queries';
import { navigate } from '../router';
import type { Template, TemplateCreate, TemplateOverrides, Vm, VmActionResponse } from '../types';
import {
  ConfirmDialog,
  DescriptionField,
  Empty,
  FormFoot,
  Modal,
  PageHead,
  QueryStatus,
  toast,
  ValidatedField,
} from '../ui';
import {
  checkGeneral,
  checkGuest,
  checkResources,
  formatLabels,
  GeneralFields,
  GuestFields,
  INITIAL_SHAPE,
  LABELS_PLACEHOLDER,
  NAME_RE,
  NAME_RULE,
  parseLabels,
  ResourceFields,
  type SetShape,
  type ShapeErrors,
  shapeBody,
  shapeErrorsOf,
  type VmShape,
} from '../vm-fields';

export function TemplatesPage() {
  const templates = useTemplates();
  const images = useImages();
  const networks = useNetworks();
  const canEdit = useCan('operator');
  const now = useNow();
  const [creating, setCreating] = useState(false);
  const [using, setUsing] = useState<Template | null>(null);
  const [deleting, setDeleting] = useState<Template | null>(null);

  const rows = (templates.data ?? []).slice().sort((a, b) => a.name.localeCompare(b.name));
  const imageName = (id: string | null) =>
    id ? (images.data?.find((i) => i.id === id)?.name ?? id.slice(0, 8)) : 'default';
  const networkNames = (t: Template) =>
    t.spec.networks === null
      ? 'default'
      : t.spec.networks.length === 0
        ? 'none'
        : t.spec.networks
            .map((n) => networks.data?.find((x) => x.id === n.network_id)?.name ?? n.network_id.slice(0, 8))
            .join(', ');

  return (
    <div className="page">
      <PageHead title="Templates" count={templates.data?.length}>
        {canEdit ? (
          <button type="button" className="btn btn-primary" onClick={() => setCreating(true)}>
            Create template
          </button>
        ) : null}
      </PageHead>
      <QueryStatus query={templates} what="templates" />
      {templates.data && rows.length === 0 ? (
        <Empty>
          No templates yet.
          {canEdit ? ' Create one here, or save a VM\'s shape with "Save as template" on its page.' : ''}
        </Empty>
      ) : null}
      {rows.length ? (
        <div className="table-wrap">
          <table className="table" data-testid="templates-table">
            <thead>
              <tr>
                <th>Name</th>
                <th>Size</th>
                <th className="hide-sm">Images</th>
                <th className="hide-sm">Networks</th>
                <th className="hide-md">VMM</th>
                <th className="hide-md">Guest</th>
                <th className="hide-md">Created</th>
                {canEdit ? <th aria-label="Actions" /> : null}
              </tr>
            </thead>
            <tbody>
              {rows.map((t) => (
                <tr key={t.id} data-template={t.name}>
                  <td>
                    <span className="strong">{t.name}</span>
                    {t.description ? (
                      <div className="small muted ellipsis narrow" title={t.description}>
                        {t.description}
                      </div>
                    ) : null}
                    {Object.keys(t.spec.labels).length ? (
                      <div>
                        {Object.entries(t.spec.labels).map(([k, v]) => (
                          <span key={k} className="chip">
                            {k}={v}
                          </span>
                        ))}
                      </div>
                    ) : null}
                  </td>
                  <td className="nowrap">
                    {t.spec.vcpu} vCPU · {formatMib(t.spec.mem_mib)}
                    <div className="small muted">
                      disk {t.spec.disk_size_mib ? formatMib(t.spec.disk_size_mib) : 'image size'}
                    </div>
                  </td>
                  <td className="hide-sm small">
                    <div className="nowrap">kernel: {imageName(t.spec.kernel_image_id)}</div>
                    <div className="nowrap">rootfs: {imageName(t.spec.rootfs_image_id)}</div>
                    {t.spec.initrd_image_id ? (
                      <div className="nowrap">initrd: {imageName(t.spec.initrd_image_id)}</div>
                    ) : null}
                  </td>
                  <td className="hide-sm">{networkNames(t)}</td>
                  <td className="hide-md">{t.spec.vmm ?? 'auto'}</td>
                  <td className="hide-md small">{guestText(t)}</td>
                  <td className="hide-md nowrap" title={formatTime(t.created_at)}>
                    {timeAgo(t.created_at, now)}
                  </td>
                  {canEdit ? (
                    <td className="actions">
                      <button type="button" className="btn btn-small" onClick={() => setUsing(t)}>
                        Instantiate
                      </button>
                      <button
                        type="button"
                        className="btn btn-small btn-danger-outline"
                        onClick={() => setDeleting(t)}
                      >
                        Delete
                      </button>
                    </td>
                  ) : null}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}

      {canEdit ? (
        <>
          <Modal open={creating} title="Create template" onClose={() => setCreating(false)} wide>
            {creating ? <CreateTemplate onClose={() => setCreating(false)} /> : null}
          </Modal>
          <Modal
            open={using !== null}
            title={`Create a VM from ${using?.name ?? ''}`}
            onClose={() => setUsing(null)}
          >
            {using ? <InstantiateTemplate template={using} onClose={() => setUsing(null)} /> : null}
          </Modal>
          <ConfirmDialog
            open={deleting !== null}
            title={`Delete template ${deleting?.name ?? ''}`}
            message="VMs made from it are not affected."
            confirmLabel="Delete"
            onConfirm={() => api('DELETE', `/api/v1/templates/${deleting?.id}`)}
            onClose={() => setDeleting(null)}
          />
        </>
      ) : null}
    </div>
  );
}

function guestText(t: Template): string {
  const g = t.spec.guest_config;
  const n = g.ssh_authorized_keys.length;
  return (
    [
      g.username && `user ${g.username}`,
      g.has_password && 'password set',
      n && `${n} SSH key${n === 1 ? '' : 's'}`,
    ]
      .filter(Boolean)
      .join(', ') || 'image defaults'
  );
}

interface Form extends VmShape {
  name: string;
  description: string;
}
type Errors = ShapeErrors & { name?: string; description?: string };

function CreateTemplate({ onClose }: { onClose: () => void }) {
  const [f, setF] = useState<Form>({ ...INITIAL_SHAPE, name: '', description: '' });
  const [errors, setErrors] = useState<Errors>({});
  const [busy, setBusy] = useState(false);
  const [apiError, setApiError] = useState<unknown>(null);
  const set: SetShape = (k, v) => setF((old) => ({ ...old, [k]: v }));
  const group = { f, set, errors };

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    // The password leaves the form's state before anything can fail: it is never shown again.
    const form = { ...f };
    setF((old) => ({ ...old, password: '' }));
    const errs: Errors = {
      ...(NAME_RE.test(form.name) ? {} : { name: NAME_RULE }),
      ...(form.description.length > 500 ? { description: 'at most 500 characters' } : {}),
      ...checkGeneral(form),
      ...checkResources(form),
      ...checkGuest(form),
    };
    setErrors(errs);
    setApiError(null);
    if (Object.keys(errs).length) return;
    const body: TemplateCreate = {
      name: form.name,
      ...(form.description.trim() ? { description: form.description.trim() } : {}),
      spec: shapeBody(form),
    };
    setBusy(true);
    try {
      const t = await api<Template>('POST', '/api/v1/templates', body);
      toast('ok', `Created template ${t.name}`);
      onClose();
    } catch (err) {
      setApiError(err);
      setErrors({
        ...shapeErrorsOf(fieldErrors(err, 'body.spec')),
        ...(err instanceof ApiError && err.details?.field === 'name' ? { name: err.message } : {}),
      });
    } finally {
      setBusy(false);
    }
  };

  return (
    <form className="stack" onSubmit={submit} noValidate data-testid="template-form">
      <div className="form-grid">
        <ValidatedField
          label="Name"
          error={errors.name}
          render={(id) => (
            <input
              id={id}
              name="name"
              autoComplete="off"
              placeholder="small-debian"
              value={f.name}
              onChange={(e) => setF((old) => ({ ...old, name: e.target.value }))}
            />
          )}
        />
        <ValidatedField
          label="Description"
          error={errors.description}
          hint="optional"
          render={(id) => (
            <input
              id={id}
              name="description"
              autoComplete="off"
              value={f.description}
              onChange={(e) => setF((old) => ({ ...old, description: e.target.value }))}
            />
          )}
        />
        <h3 className="full form-section">Resources</h3>
        <ResourceFields {...group} />
        <h3 className="full form-section">General</h3>
        <GeneralFields {...group} />
        <h3 className="full form-section">Guest</h3>
        <GuestFields {...group} withHostname={false} />
      </div>
      <FormFoot
        error={apiError}
        refused="The manager refused the template"
        onCancel={onClose}
        busy={busy}
        submit="Create template"
        submitting="Creating…"
      />
    </form>
  );
}

/** Overrides the dialog offers; each is sent only when it differs from the template. */
interface Overrides {
  name: string;
  vcpu: string;
  mem_mib: string;
  labels: string;
}

function InstantiateTemplate({ template, onClose }: { template: Template; onClose: () => void }) {
  const [f, setF] = useState<Overrides>({
    name: '',
    vcpu: String(template.spec.vcpu),
    mem_mib: String(template.spec.mem_mib),
    labels: '',
  });
  const [errors, setErrors] = useState<Partial<Overrides>>({});
  const [busy, setBusy] = useState(false);
  const [apiError, setApiError] = useState<unknown>(null);
  const set = (k: keyof Overrides, v: string) => setF((old) => ({ ...old, [k]: v }));
  const inherited = formatLabels(template.spec.labels);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    // Only the form's own rules here: ranges, and the template merged with the overrides, are the
    // manager's to check, and its field errors land on the fields below.
    const labels = parseLabels(f.labels);
    const errs: Partial<Overrides> = {
      ...(NAME_RE.test(f.name) ? {} : { name: NAME_RULE }),
      ...(/^\d*$/.test(f.vcpu) ? {} : { vcpu: 'a whole number' }),
      ...(/^\d*$/.test(f.mem_mib) ? {} : { mem_mib: 'a whole number of MiB' }),
      ...(labels.error ? { labels: labels.error } : {}),
    };
    setErrors(errs);
    setApiError(null);
    if (Object.keys(errs).length) return;
    const overrides: TemplateOverrides = {
      ...(f.vcpu && Number(f.vcpu) !== template.spec.vcpu ? { vcpu: Number(f.vcpu) } : {}),
      ...(f.mem_mib && Number(f.mem_mib) !== template.spec.mem_mib ? { mem_mib: Number(f.mem_mib) } : {}),
      ...(Object.keys(labels.labels).length ? { labels: labels.labels } : {}),
    };
    setBusy(true);
    try {
      const out = await api<VmActionResponse>('POST', `/api/v1/templates/${template.id}/instantiate`, {
        name: f.name,
        overrides,
      });
      void followOperation(out.operation, {
        running: `Creating VM ${out.vm.name} from ${template.name}`,
        succeeded: `VM ${out.vm.name} (from ${template.name}) is running`,
        failed: `Create VM ${out.vm.name} from ${template.name} failed`,
      });
      onClose();
      navigate(`/vms/${out.vm.id}`);
    } catch (err) {
      setApiError(err);
      const o = fieldErrors(err, 'body.overrides');
      const top = fieldErrors(err, 'body');
      const first = (k: string) => Object.entries(o).find(([p]) => p === k || p.startsWith(`${k}.`))?.[1];
      setErrors({
        name: top.name,
        vcpu: first('vcpu'),
        mem_mib: first('mem_mib'),
        labels: first('labels'),
      });
    } finally {
      setBusy(false);
    }
  };

  return (
    <form className="stack" onSubmit={submit} noValidate data-testid="instantiate-template">
      <ValidatedField
        label="VM name"
        error={errors.name}
        render={(id) => (
          <input
            id={id}
            name="name"
            autoComplete="off"
            placeholder={`${template.name}-1`}
            value={f.name}
            onChange={(e) => set('name', e.target.value)}
          />
        )}
      />
      <div className="form-grid">
        <ValidatedField
          label="vCPUs"
          error={errors.vcpu}
          hint={`template: ${template.spec.vcpu}`}
          render={(id) => (
            <input
              id={id}
              name="vcpu"
              type="number"
              min={1}
              max={32}
              value={f.vcpu}
              onChange={(e) => set('vcpu', e.target.value)}
            />
          )}
        />
        <ValidatedField
          label="Memory (MiB)"
          error={errors.mem_mib}
          hint={`template: ${formatMib(template.spec.mem_mib)}`}
          render={(id) => (
            <input
              id={id}
              name="mem_mib"
              type="number"
              min={64}
              step={64}
              value={f.mem_mib}
              onChange={(e) => set('mem_mib', e.target.value)}
            />
          )}
        />
      </div>
      <ValidatedField
        label="Labels"
        error={errors.labels}
        hint={
          inherited ? `merged over the template's: ${inherited}` : 'optional, key=value separated by commas'
        }
        render={(id) => (
          <input
            id={id}
            name="labels"
            autoComplete="off"
            placeholder={LABELS_PLACEHOLDER}
            value={f.labels}
            onChange={(e) => set('labels', e.target.value)}
          />
        )}
      />
      <FormFoot
        error={apiError}
        refused="The manager refused the VM"
        onCancel={onClose}
        busy={busy}
        submit="Create VM"
        submitting="Creating…"
      />
    </form>
  );
}

/** "Save as template" on a VM's page: the VM's size, images, networks and guest configuration. */
export function SaveAsTemplateDialog({ vm, open, onClose }: { vm: Vm; open: boolean; onClose: () => void }) {
  return (
    <Modal open={open} title={`Save ${vm.name} as a template`} onClose={onClose}>
      {open ? <SaveAsTemplate vm={vm} onClose={onClose} /> : null}
    </Modal>
  );
}

function SaveAsTemplate({ vm, onClose }: { vm: Vm; onClose: () => void }) {
  const [name, setName] = useState(`${vm.name}-template`.slice(0, 63));
  const [description, setDescription] = useState('');
  const [nameError, setNameError] = useState<string | undefined>();
  const [busy, setBusy] = useState(false);
  const [apiError, setApiError] = useState<unknown>(null);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!NAME_RE.test(name)) return setNameError(NAME_RULE);
    setNameError(undefined);
    setApiError(null);
    setBusy(true);
    try {
      const t = await api<Template>('POST', `/api/v1/vms/${vm.id}/template`, {
        name,
        ...(description.trim() ? { description: description.trim() } : {}),
      });
      toast('ok', `Saved template ${t.name}`);
      onClose();
    } catch (err) {
      setApiError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <form className="stack" onSubmit={submit} noValidate data-testid="save-as-template">
      <p className="muted">
        The template keeps {vm.name}'s size, images, networks (not its addresses) and guest configuration, its
        password only as the hash.
      </p>
      <ValidatedField
        label="Template name"
        error={nameError}
        render={(id) => (
          <input
            id={id}
            name="name"
            autoComplete="off"
            value={name}
            onChange={(e) => setName(e.target.value)}
          />
        )}
      />
      <DescriptionField value={description} onChange={setDescription} />
      <FormFoot
        error={apiError}
        refused="The manager refused the template"
        onCancel={onClose}
        busy={busy}
        submit="Save template"
        submitting="Saving…"
      />
    </form>
  );
}
