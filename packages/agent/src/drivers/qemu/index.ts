export * from './kvm-probe';
export * from './qemu-args';
export * from './qemu-driver';
export * from './qemu-vm';
export * from './qmp';
