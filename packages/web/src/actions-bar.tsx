/** The row of lifecycle buttons on a VM's or a container's page, with a confirmation where one is asked. */
import { type ReactNode, useState } from 'react';
import { followOperation } from './operation-toast';
import { navigate } from './router';
import type { Operation } from './types';
import { ConfirmDialog, toast, toastError } from './ui';

export interface ActionDef<K extends string, S, T> {
  key: K;
  label: string;
  allowed: (state: S) => boolean;
  /** The question asked before the action runs; no question, no confirmation. */
  confirm?: (target: T) => string;
  danger?: boolean;
}

export function ActionsBar<K extends string, S, T extends { name: string }>({
  target,
  state,
  actions,
  run,
  listPath,
  testId,
  children,
}: {
  target: T;
  state: S;
  actions: readonly ActionDef<K, S, T>[];
  run: (target: T, key: K) => Promise<unknown>;
  /** Where a delete goes once it is accepted. */
  listPath: string;
  testId: string;
  /** More buttons and their dialogs, after the lifecycle ones. */
  children?: ReactNode;
}) {
  const [pending, setPending] = useState<K | null>(null);
  const [confirming, setConfirming] = useState<ActionDef<K, S, T> | null>(null);

  const perform = async (a: ActionDef<K, S, T>) => {
    const out = (await run(target, a.key)) as { operation?: Operation | null } | undefined;
    const what = `${a.label} ${target.name}`;
    // The request only started the work: the toast follows the operation to its end.
    if (out?.operation)
      void followOperation(out.operation, {
        running: what,
        succeeded: `${what}: done`,
        failed: `${what} failed`,
      });
    else toast('ok', `${what}: done`);
    if (a.key === 'delete') navigate(listPath);
  };
  const click = async (a: ActionDef<K, S, T>) => {
    if (a.confirm) return setConfirming(a);
    setPending(a.key);
    try {
      await perform(a);
    } catch (err) {
      toastError(err, `${a.label} ${target.name}`);
    } finally {
      setPending(null);
    }
  };

  return (
    <div className="actions-bar" data-testid={testId}>
      {actions.map((a) => (
        <button
          key={a.key}
          type="button"
          className={`btn${a.danger ? ' btn-danger-outline' : ''}`}
          disabled={!a.allowed(state) || pending !== null}
          onClick={() => click(a)}
        >
          {a.label}
        </button>
      ))}
      {children}
      <ConfirmDialog
        open={confirming !== null}
        title={confirming ? `${confirming.label} ${target.name}` : ''}
        message={confirming?.confirm?.(target) ?? ''}
        confirmLabel={confirming?.label ?? ''}
        requireText={confirming?.key === 'delete' ? target.name : undefined}
        onConfirm={() => (confirming ? perform(confirming) : Promise.resolve())}
        onClose={() => setConfirming(null)}
      />
    </div>
  );
}
