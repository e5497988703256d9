/** Images: the live list, upload with byte progress, URL and OCI imports with operation progress. */
import { type FormEvent, useEffect, useRef, useState } from 'react';
import { api, uploadFile, withQuery } from '../api';
import { formatBytes, formatTime, timeAgo, useNow } from '../format';
import { opDone, useCan, useImages, useOperation } from '../queries';
import type { Image, ImageActionResponse, ImageCreate, ImageKind, Operation } from '../types';
import {
  Badge,
  ConfirmDialog,
  Empty,
  ErrorBox,
  Field,
  Loading,
  Modal,
  OpStatus,
  PageHead,
  ProgressBar,
  QueryStatus,
  type Tone,
  toast,
  toastError,
} from '../ui';

const KINDS: ImageKind[] = ['kernel', 'initrd', 'rootfs'];
const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;
const SHA_RE = /^[a-f0-9]{64}$/;
const STATUS_TONE: Record<Image['status'], Tone> = { importing: 'busy', ready: 'ok' };

export function ImagesPage() {
  const images = useImages();
  const canEdit = useCan('operator');
  const now = useNow();
  const [uploading, setUploading] = useState(false);
  const [importing, setImporting] = useState(false);
  const [deleting, setDeleting] = useState<Image | null>(null);
  const [kind, setKind] = useState('');

  const rows = (images.data ?? [])
    .filter((i) => !kind || i.kind === kind)
    .sort((a, b) => a.kind.localeCompare(b.kind) || a.name.localeCompare(b.name));

  const makeDefault = async (img: Image) => {
    try {
      await api('PATCH', `/api/v1/images/${img.id}`, { is_default: true });
      toast('ok', `${img.name} is now the default ${img.kind}`);
    } catch (err) {
      toastError(err, img.name);
    }
  };

  return (
    <div className="page">
      <PageHead title="Images" count={images.data?.length}>
        {canEdit ? (
          <div className="toolbar">
            <button type="button" className="btn" onClick={() => setImporting(true)}>
              Import
            </button>
            <button type="button" className="btn btn-primary" onClick={() => setUploading(true)}>
              Upload image
            </button>
          </div>
        ) : null}
      </PageHead>
      <div className="toolbar">
        <select aria-label="Filter by kind" value={kind} onChange={(e) => setKind(e.target.value)}>
          <option value="">All kinds</option>
          {KINDS.map((k) => (
            <option key={k} value={k}>
              {k}
            </option>
          ))}
        </select>
      </div>
      <QueryStatus query={images} what="images" />
      {images.data && rows.length === 0 ? (
        <Empty>
          {images.data.length === 0
            ? canEdit
              ? 'No images yet. Upload one or import it from a URL or an OCI registry.'
              : 'No images yet.'
            : 'No image of this kind.'}
        </Empty>
      ) : null}
      {rows.length ? (
        <div className="table-wrap">
          <table className="table" data-testid="images-table">
            <thead>
              <tr>
                <th>Name</th>
                <th>Kind</th>
                <th>Status</th>
                <th className="hide-sm">Format</th>
                <th className="hide-sm num">Size</th>
                <th className="hide-md">SHA-256</th>
                <th className="hide-md">Created</th>
                {canEdit ? <th aria-label="Actions" /> : null}
              </tr>
            </thead>
            <tbody>
              {rows.map((img) => (
                <tr key={img.id} data-image={img.name}>
                  <td>
                    <span className="strong">{img.name}</span>{' '}
                    {img.is_default ? (
                      <Badge tone="info" title={`the default ${img.kind}`}>
                        default
                      </Badge>
                    ) : null}
                    <div className="small muted ellipsis narrow" title={sourceText(img)}>
                      {sourceText(img)}
                    </div>
                  </td>
                  <td>{img.kind}</td>
                  <td>
                    <Badge tone={STATUS_TONE[img.status]}>{img.status}</Badge>
                  </td>
                  <td className="hide-sm">{img.format ?? '—'}</td>
                  <td className="hide-sm num nowrap">
                    {formatBytes(img.size_bytes)}
                    {img.stored_bytes !== null ? (
                      <div className="small muted" title="what it takes on the manager's disk (sparse)">
                        {formatBytes(img.stored_bytes)} stored
                      </div>
                    ) : null}
                  </td>
                  <td className="hide-md">
                    {img.sha256 ? <code title={img.sha256}>{img.sha256.slice(0, 12)}</code> : '—'}
                  </td>
                  <td className="hide-md nowrap" title={formatTime(img.created_at)}>
                    {timeAgo(img.created_at, now)}
                  </td>
                  {canEdit ? (
                    <td className="actions">
                      {!img.is_default && img.status === 'ready' ? (
                        <button type="button" className="btn btn-small" onClick={() => makeDefault(img)}>
                          Set default
                        </button>
                      ) : null}
                      <button
                        type="button"
                        className="btn btn-small btn-danger-outline"
                        onClick={() => setDeleting(img)}
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
          <UploadImage open={uploading} onClose={() => setUploading(false)} />
          <ImportImage open={importing} onClose={() => setImporting(false)} />
          <ConfirmDialog
            open={deleting !== null}
            title={`Delete image ${deleting?.name ?? ''}`}
            message={
              deleting?.is_default
                ? `This is the default ${deleting.kind}: VMs and templates that name no ${deleting.kind} lose their fallback. Its bytes are removed once no other image shares them.`
                : 'Its bytes are removed once no other image shares them. The manager refuses while a VM, template or snapshot uses it.'
            }
            confirmLabel="Delete"
            onConfirm={() =>
              api(
                'DELETE',
                withQuery(`/api/v1/images/${deleting?.id}`, {
                  force: deleting?.is_default ? 'true' : undefined,
                }),
              )
            }
            onClose={() => setDeleting(null)}
          />
        </>
      ) : null}
    </div>
  );
}

function sourceText(img: Image): string {
  const s = img.source;
  if (s.type === 'url') return `from ${s.url ?? 'a URL'}`;
  if (s.type === 'oci') return `from ${s.reference ?? 'an OCI registry'}`;
  if (s.type === 'path') return `host file ${s.path ?? ''}`;
  return 'uploaded';
}

function KindSelect({
  id,
  value,
  onChange,
}: {
  id: string;
  value: ImageKind;
  onChange: (k: ImageKind) => void;
}) {
  return (
    <select id={id} name="kind" value={value} onChange={(e) => onChange(e.target.value as ImageKind)}>
      {KINDS.map((k) => (
        <option key={k} value={k}>
          {k}
        </option>
      ))}
    </select>
  );
}

function UploadImage({ open, onClose }: { open: boolean; onClose: () => void }) {
  const [file, setFile] = useState<File | null>(null);
  const [name, setName] = useState('');
  const [kind, setKind] = useState<ImageKind>('rootfs');
  const [progress, setProgress] = useState<{ sent: number; total: number } | null>(null);
  const [done, setDone] = useState<Image | null>(null);
  const [error, setError] = useState<unknown>(null);
  const abort = useRef<AbortController | null>(null);
  const busy = progress !== null && !done && !error;

  const reset = () => {
    abort.current?.abort();
    abort.current = null;
    setFile(null);
    setName('');
    setKind('rootfs');
    setProgress(null);
    setDone(null);
    setError(null);
  };
  const close = () => {
    reset();
    onClose();
  };
  const pick = (f: File | null) => {
    setFile(f);
    if (f && !name)
      setName(
        f.name
          .replace(/[^a-zA-Z0-9_.-]/g, '-')
          .replace(/^[^a-zA-Z0-9]+/, '')
          .slice(0, 63),
      );
  };
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!file) return setError(new Error('choose a file to upload'));
    if (!NAME_RE.test(name)) return setError(new Error('name: letters, digits, "-", "_" or "." (1-63)'));
    setError(null);
    setDone(null);
    setProgress({ sent: 0, total: file.size });
    const ctl = new AbortController();
    abort.current = ctl;
    try {
      const out = await uploadFile<ImageActionResponse>(
        withQuery('/api/v1/images/upload', { name, kind }),
        file,
        (sent, total) => setProgress({ sent, total }),
        ctl.signal,
      );
      setProgress({ sent: file.size, total: file.size });
      setDone(out.image);
      toast('ok', `Uploaded ${out.image.name}`);
    } catch (err) {
      if ((err as Error).name !== 'AbortError') setError(err);
    } finally {
      abort.current = null;
    }
  };
  const percent = progress ? (progress.total > 0 ? (progress.sent / progress.total) * 100 : 100) : 0;

  return (
    <Modal
      open={open}
      title="Upload image"
      onClose={close}
      footer={
        <>
          <button type="button" className="btn" onClick={close}>
            {done ? 'Done' : 'Cancel'}
          </button>
          {done ? null : (
            <button type="submit" form="upload-image" className="btn btn-primary" disabled={busy}>
              {busy ? 'Uploading…' : 'Upload'}
            </button>
          )}
        </>
      }
    >
      <form id="upload-image" className="stack" onSubmit={submit}>
        <Field
          label="File"
          htmlFor="ui-file"
          hint="a kernel (bzImage or vmlinux), an initrd, or a root filesystem"
        >
          <input
            id="ui-file"
            name="file"
            type="file"
            disabled={busy}
            onChange={(e) => pick(e.target.files?.[0] ?? null)}
          />
        </Field>
        <Field label="Name" htmlFor="ui-name">
          <input
            id="ui-name"
            name="name"
            autoComplete="off"
            disabled={busy}
            value={name}
            onChange={(e) => setName(e.target.value)}
          />
        </Field>
        <Field label="Kind" htmlFor="ui-kind">
          <KindSelect id="ui-kind" value={kind} onChange={setKind} />
        </Field>
        {progress ? (
          <div data-testid="upload-progress">
            <ProgressBar
              label="Upload"
              percent={percent}
              message={`${formatBytes(progress.sent)} of ${formatBytes(progress.total)} sent${
                progress.sent >= progress.total && !done && !error ? '; checking the image…' : ''
              }`}
            />
          </div>
        ) : null}
        {done ? (
          <div className="alert alert-ok" role="status">
            {done.name} is {done.status} ({done.format ?? 'unknown format'}, {formatBytes(done.size_bytes)}).
          </div>
        ) : null}
        <ErrorBox error={error} title="Upload failed" />
      </form>
    </Modal>
  );
}

type SourceType = 'url' | 'oci';

function ImportImage({ open, onClose }: { open: boolean; onClose: () => void }) {
  const [type, setType] = useState<SourceType>('url');
  const [name, setName] = useState('');
  const [kind, setKind] = useState<ImageKind>('rootfs');
  const [url, setUrl] = useState('');
  const [sha256, setSha256] = useState('');
  const [reference, setReference] = useState('');
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [opId, setOpId] = useState<string | null>(null);

  const close = () => {
    setType('url');
    setName('');
    setKind('rootfs');
    setUrl('');
    setSha256('');
    setReference('');
    setUsername('');
    setPassword('');
    setError(null);
    setOpId(null);
    onClose();
  };
  // OCI imports always make a root filesystem.
  useEffect(() => {
    if (type === 'oci') setKind('rootfs');
  }, [type]);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    // The password leaves the form's state before anything can fail.
    const pw = password;
    setPassword('');
    if (!NAME_RE.test(name)) return setError(new Error('name: letters, digits, "-", "_" or "." (1-63)'));
    if (type === 'url' && !/^https?:\/\//.test(url)) return setError(new Error('an http or https URL'));
    if (type === 'url' && sha256 && !SHA_RE.test(sha256))
      return setError(new Error('sha256: 64 lowercase hexadecimal digits'));
    if (type === 'oci' && !reference.trim())
      return setError(new Error('an image reference such as docker.io/library/alpine:3.20'));
    const source: ImageCreate['source'] =
      type === 'url'
        ? { type: 'url', url, ...(sha256 ? { sha256 } : {}) }
        : {
            type: 'oci',
            reference: reference.trim(),
            ...(username ? { username } : {}),
            ...(pw ? { password: pw } : {}),
          };
    setBusy(true);
    setError(null);
    try {
      const out = await api<ImageActionResponse>('POST', '/api/v1/images', { name, kind, source });
      if (out.operation) setOpId(out.operation.id);
      else close();
      toast('info', `Importing ${out.image.name}`);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <Modal
      open={open}
      title="Import image"
      onClose={close}
      footer={
        <>
          <button type="button" className="btn" onClick={close}>
            {opId ? 'Done' : 'Cancel'}
          </button>
          {opId ? null : (
            <button type="submit" form="import-image" className="btn btn-primary" disabled={busy}>
              {busy ? 'Starting…' : 'Import'}
            </button>
          )}
        </>
      }
    >
      {opId ? (
        <ImportProgress opId={opId} name={name} />
      ) : (
        <form id="import-image" className="stack" onSubmit={submit}>
          <Field label="Source" htmlFor="ii-type">
            <select id="ii-type" value={type} onChange={(e) => setType(e.target.value as SourceType)}>
              <option value="url">URL (http or https)</option>
              <option value="oci">OCI registry (becomes an ext4 root filesystem)</option>
            </select>
          </Field>
          <Field label="Name" htmlFor="ii-name">
            <input
              id="ii-name"
              name="name"
              autoComplete="off"
              value={name}
              onChange={(e) => setName(e.target.value)}
            />
          </Field>
          {type === 'url' ? (
            <>
              <Field label="Kind" htmlFor="ii-kind">
                <KindSelect id="ii-kind" value={kind} onChange={setKind} />
              </Field>
              <Field label="URL" htmlFor="ii-url">
                <input
                  id="ii-url"
                  name="url"
                  type="url"
                  autoComplete="off"
                  spellCheck={false}
                  placeholder="https://example.org/rootfs.ext4"
                  value={url}
                  onChange={(e) => setUrl(e.target.value)}
                />
              </Field>
              <Field label="Expected SHA-256" htmlFor="ii-sha" hint="optional; a mismatch fails the import">
                <input
                  id="ii-sha"
                  name="sha256"
                  autoComplete="off"
                  spellCheck={false}
                  value={sha256}
                  onChange={(e) => setSha256(e.target.value.trim().toLowerCase())}
                />
              </Field>
            </>
          ) : (
            <>
              <Field label="Reference" htmlFor="ii-ref">
                <input
                  id="ii-ref"
                  name="reference"
                  autoComplete="off"
                  spellCheck={false}
                  placeholder="docker.io/library/alpine:3.20"
                  value={reference}
                  onChange={(e) => setReference(e.target.value)}
                />
              </Field>
              <Field label="Registry user" htmlFor="ii-user" hint="optional">
                <input
                  id="ii-user"
                  name="username"
                  autoComplete="off"
                  value={username}
                  onChange={(e) => setUsername(e.target.value)}
                />
              </Field>
              <Field label="Registry password" htmlFor="ii-pw" hint="used for this import only; never stored">
                <input
                  id="ii-pw"
                  name="password"
                  type="password"
                  autoComplete="off"
                  value={password}
                  onChange={(e) => setPassword(e.target.value)}
                />
              </Field>
            </>
          )}
          <ErrorBox error={error} title="The manager refused the import" />
        </form>
      )}
    </Modal>
  );
}

function ImportProgress({ opId, name }: { opId: string; name: string }) {
  const op = useOperation(opId);
  const o: Operation | undefined = op.data;
  return (
    <div className="stack" data-testid="import-progress">
      <p>
        Importing <strong>{name}</strong>. You can close this dialog: the import goes on, and the list shows
        its status.
      </p>
      {o ? (
        <>
          <div>
            <OpStatus status={o.status} />
          </div>
          <ProgressBar
            label="Import"
            percent={o.status === 'succeeded' ? 100 : o.progress.percent}
            message={o.progress.message}
          />
          {o.status === 'failed' || o.status === 'cancelled' ? (
            <div className="alert alert-err" role="alert">
              <strong>Import {o.status}: </strong>
              {o.error?.message ?? 'no reason given'}
            </div>
          ) : null}
          {opDone(o) && o.status === 'succeeded' ? (
            <div className="alert alert-ok" role="status">
              {name} is ready.
            </div>
          ) : null}
        </>
      ) : (
        <Loading what="progress" />
      )}
      <ErrorBox error={op.error} />
    </div>
  );
}
