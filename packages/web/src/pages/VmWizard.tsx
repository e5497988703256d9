/** The create wizard: General → Resources → Guest → Confirm, one POST /api/v1/vms at the end. */
import { useQueryClient } from '@tanstack/react-query';
import { type FormEvent, useEffect, useRef, useState } from 'react';
import { api } from '../api';
import { formatMib } from '../format';
import { followOperation } from '../operation-toast';
import { keys } from '../queries';
import { Link } from '../router';
import type { Vm, VmActionResponse, VmCreate } from '../types';
import { ErrorBox, Modal, ValidatedField } from '../ui';
import {
  checkGeneral,
  checkGuest,
  checkResources,
  GeneralFields,
  GuestFields,
  guestSummary,
  INITIAL_SHAPE,
  NAME_RE,
  NAME_RULE,
  ResourceFields,
  type SetShape,
  shapeBody,
  useNetworkLabel,
  type VmShape,
} from '../vm-fields';

const STEPS = ['General', 'Resources', 'Guest', 'Confirm'] as const;

interface Form extends VmShape {
  name: string;
  start: boolean;
}

const INITIAL: Form = { ...INITIAL_SHAPE, name: '', start: true };
type Errors = Partial<Record<keyof Form, string>>;

function validate(f: Form, step: number): Errors {
  if (step === 0) return { ...(NAME_RE.test(f.name) ? {} : { name: NAME_RULE }), ...checkGeneral(f) };
  if (step === 1) return checkResources(f);
  if (step === 2) return checkGuest(f);
  return {};
}

const toBody = (f: Form): VmCreate => ({ name: f.name, ...shapeBody(f), start: f.start });

export function VmWizard({ open, onClose }: { open: boolean; onClose: () => void }) {
  return (
    <Modal open={open} title="Create virtual machine" onClose={onClose} wide>
      {open ? <WizardBody onClose={onClose} /> : null}
    </Modal>
  );
}

function WizardBody({ onClose }: { onClose: () => void }) {
  const qc = useQueryClient();
  const networkLabel = useNetworkLabel();
  const [f, setF] = useState<Form>(INITIAL);
  const [step, setStep] = useState(0);
  const [errors, setErrors] = useState<Errors>({});
  const [busy, setBusy] = useState(false);
  const [apiError, setApiError] = useState<unknown>(null);
  const form = useRef<HTMLFormElement>(null);
  // Focus the first field of each step (keyboard users go straight on typing).
  // biome-ignore lint/correctness/useExhaustiveDependencies: runs again on every step change
  useEffect(() => {
    form.current
      ?.querySelector<HTMLElement>('.form-grid input, .form-grid select, .form-grid textarea')
      ?.focus();
  }, [step]);
  const set = <K extends keyof Form>(k: K, v: Form[K]) => setF((old) => ({ ...old, [k]: v }));
  const taken = qc.getQueryData<Vm[]>(keys.vms)?.some((v) => v.name === f.name);
  const setShape: SetShape = (k, v) => setF((old) => ({ ...old, [k]: v }));
  const group = { f, set: setShape, errors };

  const next = (e?: FormEvent) => {
    e?.preventDefault();
    const errs = validate(f, step);
    setErrors(errs);
    if (Object.keys(errs).length) return;
    if (step < STEPS.length - 1) setStep(step + 1);
    else void submit();
  };

  const submit = async () => {
    setBusy(true);
    setApiError(null);
    try {
      const out = await api<VmActionResponse>('POST', '/api/v1/vms', toBody(f));
      void followOperation(out.operation, {
        running: `Creating VM ${out.vm.name}`,
        succeeded: `VM ${out.vm.name} is ${out.operation.kind === 'vm.define' ? 'created' : 'running'}`,
        failed: `Create VM ${out.vm.name} failed`,
      });
      onClose(); // unmounts the form: the password is gone with it
    } catch (err) {
      setApiError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <form ref={form} onSubmit={next} className="wizard" noValidate>
      <ol className="steps">
        {STEPS.map((s, i) => (
          <li key={s} className={i === step ? 'current' : i < step ? 'done' : undefined}>
            <button type="button" disabled={i > step} onClick={() => setStep(i)}>
              <span className="step-n">{i + 1}</span> {s}
            </button>
          </li>
        ))}
      </ol>

      {step === 0 ? (
        <div className="form-grid">
          <ValidatedField
            label="Name"
            error={errors.name}
            hint={taken ? 'another VM already has this name' : undefined}
            render={(id) => (
              <input
                id={id}
                name="name"
                value={f.name}
                required
                onChange={(e) => set('name', e.target.value)}
                placeholder="web-1"
              />
            )}
          />
          <GeneralFields {...group} />
          <label className="check">
            <input
              type="checkbox"
              name="start"
              checked={f.start}
              onChange={(e) => set('start', e.target.checked)}
            />
            Start after creation
          </label>
        </div>
      ) : null}

      {step === 1 ? (
        <div className="form-grid">
          <ResourceFields {...group} />
        </div>
      ) : null}

      {step === 2 ? (
        <div className="form-grid">
          <GuestFields
            {...group}
            hostnamePlaceholder={NAME_RE.test(f.name) ? f.name.replace(/[._]/g, '-') : ''}
          />
        </div>
      ) : null}

      {step === 3 ? (
        <dl className="kv summary" data-testid="wizard-summary">
          <dt>Name</dt>
          <dd>{f.name}</dd>
          <dt>VMM</dt>
          <dd>{f.vmm}</dd>
          <dt>vCPUs / memory</dt>
          <dd>
            {f.vcpu} / {formatMib(Number(f.mem_mib))}
          </dd>
          <dt>Disk</dt>
          <dd>{f.disk_size_mib ? formatMib(Number(f.disk_size_mib)) : 'image size'}</dd>
          <dt>Images</dt>
          <dd>
            kernel {f.kernel_image_id || 'default'}, rootfs {f.rootfs_image_id || 'default'}
            {f.initrd_image_id ? `, initrd ${f.initrd_image_id}` : ''}
          </dd>
          <dt>Network</dt>
          <dd>{networkLabel(f.network)}</dd>
          <dt>Guest</dt>
          <dd>{guestSummary(f)}</dd>
          <dt>Restart policy</dt>
          <dd>{f.restart_policy}</dd>
          <dt>Labels</dt>
          <dd>{f.labels.trim() || '—'}</dd>
          <dt>Start now</dt>
          <dd>{f.start ? 'yes' : 'no'}</dd>
        </dl>
      ) : null}

      <ErrorBox error={apiError} title="The manager refused the VM" />
      <div className="modal-foot wizard-foot">
        <button type="button" className="btn" onClick={onClose}>
          Cancel
        </button>
        <span className="spacer" />
        {step > 0 ? (
          <button type="button" className="btn" onClick={() => setStep(step - 1)}>
            Back
          </button>
        ) : null}
        <button type="submit" className="btn btn-primary" disabled={busy}>
          {step < STEPS.length - 1 ? 'Next' : busy ? 'Creating…' : 'Create'}
        </button>
      </div>
      <p className="small muted">
        Progress shows in the VM list and under <Link to="/">recent operations</Link>.
      </p>
    </form>
  );
}
