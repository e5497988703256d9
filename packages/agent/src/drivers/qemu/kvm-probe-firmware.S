/* nqvm KVM probe firmware, a 64 KiB ROM mapped below 4 GiB (see kvm-probe.ts for why and how
   it is built). From the reset vector: real mode -> protected mode -> long mode with identity
   paging (2 MiB pages for 0-2 MiB and the ROM) -> 50 million loop iterations ->
   "NQVM-KVM-OK\n" on COM1 -> halt. */
.set BASE, 0xffff0000
.text
.code16
start16:
  cli
  lgdtl %cs:(gdt_desc - BASE)
  mov %cr0, %eax
  or $1, %eax
  mov %eax, %cr0
  ljmpl $0x08, $start32
.code32
start32:
  mov $0x10, %ax
  mov %ax, %ds
  mov %ax, %es
  mov %ax, %ss
  /* page tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD 0-1G), 0x4000 (PD 3-4G) */
  mov $0x1000, %edi
  xor %eax, %eax
  mov $0x1000, %ecx
  rep stosl
  movl $0x2003, 0x1000
  movl $0x3003, 0x2000
  movl $0x4003, 0x2018
  movl $0x83, 0x3000
  movl $0xffe00083, 0x4ff8
  mov %cr4, %eax
  or $0x20, %eax
  mov %eax, %cr4
  mov $0x1000, %eax
  mov %eax, %cr3
  mov $0xc0000080, %ecx
  rdmsr
  or $0x100, %eax
  wrmsr
  mov %cr0, %eax
  or $0x80000000, %eax
  mov %eax, %cr0
  ljmp $0x18, $start64
.code64
start64:
  mov $50000000, %ecx
1:
  dec %ecx
  jnz 1b
  lea msg(%rip), %rsi
  mov $0x3f8, %dx
2:
  lodsb
  test %al, %al
  jz 3f
  out %al, %dx
  jmp 2b
3:
  hlt
  jmp 3b
msg:
  .asciz "NQVM-KVM-OK\n"
.align 8
gdt:
  .quad 0
  .quad 0x00cf9a000000ffff
  .quad 0x00cf92000000ffff
  .quad 0x00af9a000000ffff
gdt_desc:
  .word 31
  .long gdt
code_end:
.code16
.org 0xfff0
  jmp start16
.org 0x10000
