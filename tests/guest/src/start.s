// petrel test guest: 64-bit entry point (Linux x86-64 boot protocol, 64-bit entry).
//
// On entry (from the VMM): long mode, paging on with some identity map, interrupts off,
// CS = 0x08 (64-bit code), data selectors 0x10, rsi = boot_params address, rsp = a small boot stack.
//
// We: switch to our own 64 KiB stack, record the entry state, zero .bss, load our own identity
// page tables for 0..4 GiB (2 MiB pages; 3..4 GiB uncached: that is where MMIO lives), enable the
// SSE control bits, install an IDT for vectors 0..31 and call the Rust `petrel_guest_main`.

// ---------------------------------------------------------------------------------------------
.section .text.start, "ax"
.global _start
.type _start, @function
_start:
    // Entry state, kept in .data (which is loaded from the ELF, not zeroed) for the
    // `bootstate` scenario. rflags is recorded before our own `cli`.
    mov [rip + entry_rsi], rsi
    mov [rip + entry_rsp], rsp
    lea rsp, [rip + stack_top]
    pushfq
    pop rax
    mov [rip + entry_rflags], rax
    cli
    mov rax, cr0
    mov [rip + entry_cr0], rax
    mov rax, cr3
    mov [rip + entry_cr3], rax
    mov rax, cr4
    mov [rip + entry_cr4], rax
    mov ecx, 0xC0000080                 // IA32_EFER
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov [rip + entry_efer], rax
    mov ax, cs
    mov [rip + entry_cs], ax
    mov ax, ds
    mov [rip + entry_ds], ax
    mov ax, ss
    mov [rip + entry_ss], ax
    sgdt [rip + entry_gdtr]

    // Zero .bss (Rust's zero-initialised statics). The stack and the command-line buffer live in
    // .noinit instead: zeroing costs ~0.5 us per 8 bytes under PVM. Both ends are 16-byte aligned.
    cld
    lea rdi, [rip + __bss_start]
    lea rcx, [rip + __bss_end]
    sub rcx, rdi
    shr rcx, 3
    xor eax, eax
    rep stosq

    // Our own identity map of 0..4 GiB (see .data.pagetables: built by the assembler, so it
    // costs no guest instructions; building it at run time took ~7 ms under PVM).
    lea rax, [rip + pml4]
    mov cr3, rax

    // SSE control bits, in case any SSE instruction runs: CR0.MP=1, CR0.EM=0,
    // CR4.OSFXSR=1, CR4.OSXMMEXCPT=1.
    mov rax, cr0
    and rax, ~4
    or rax, 2
    mov cr0, rax
    mov rax, cr4
    or rax, 0x600
    mov cr4, rax

    // IDT: interrupt gates for vectors 0..31 (selector 0x08, DPL 0). The IDT limit covers only
    // these, so `int n` or a stray interrupt with n >= 32 raises #GP (vector 13) with error
    // code n*8+2, which we report.
    lea rdi, [rip + idt]
    lea rdx, [rip + isr_stubs]
    mov ecx, 32
5:  mov eax, edx
    and eax, 0xffff                     // offset 15:0
    or eax, 0x00080000                  // selector 0x08
    mov r8, rdx
    shr r8, 16
    and r8, 0xffff
    shl r8, 48                          // offset 31:16
    or rax, r8
    mov r8, 0x00008E0000000000          // present, DPL 0, 64-bit interrupt gate
    or rax, r8
    mov [rdi], rax
    mov rax, rdx
    shr rax, 32                         // offset 63:32
    mov [rdi + 8], rax
    add rdi, 16
    add rdx, 16
    dec ecx
    jnz 5b
    lidt [rip + idtr]

    mov rdi, [rip + entry_rsi]
    xor ebp, ebp
    call petrel_guest_main              // never returns
6:  cli
    hlt
    jmp 6b
.size _start, . - _start

// ---------------------------------------------------------------------------------------------
// Exception stubs: 16 bytes each, vector n at isr_stubs + 16*n. Each pushes a dummy error code
// when the CPU does not push one, then the vector number.
.section .text.isr, "ax"
.balign 16
.type isr_stubs, @function
isr_stubs:
.set vec, 0
.rept 32
    .balign 16
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    push 0
    .endif
    push vec
    jmp isr_common
.set vec, vec + 1
.endr
.size isr_stubs, . - isr_stubs

.type isr_common, @function
isr_common:
    // [rsp] = vector, [rsp+8] = error code, [rsp+16] = faulting rip, then cs, rflags, rsp, ss.
    mov rdi, [rsp]
    mov rsi, [rsp + 8]
    mov rdx, [rsp + 16]
    and rsp, -16
    cld
    call petrel_guest_exception         // never returns
7:  cli
    hlt
    jmp 7b
.size isr_common, . - isr_common

// ---------------------------------------------------------------------------------------------
.section .data.petrel_entry, "aw"
.balign 16
.global entry_rsi, entry_rsp, entry_rflags, entry_cr0, entry_cr3, entry_cr4, entry_efer
.global entry_cs, entry_ds, entry_ss, entry_gdtr
entry_rsi:    .quad 0
entry_rsp:    .quad 0
entry_rflags: .quad 0
entry_cr0:    .quad 0
entry_cr3:    .quad 0
entry_cr4:    .quad 0
entry_efer:   .quad 0
entry_cs:     .short 0
entry_ds:     .short 0
entry_ss:     .short 0
.balign 16
entry_gdtr:   .short 0                  // limit
              .quad 0                   // base
.balign 16
.global idtr                            // also loaded by the APs (smp.s)
idtr:         .short 32 * 16 - 1
              .quad idt

// ---------------------------------------------------------------------------------------------
// Identity map of 0..4 GiB with 2 MiB pages: PML4 → PDPT → 4 page directories. 3..4 GiB (MMIO,
// IOAPIC, LAPIC) is mapped uncached (PCD | PWT).
.section .data.pagetables, "aw"
.balign 4096
.global pml4                            // also used by the APs (smp.s)
pml4:
    .quad pdpt + 3                      // P | RW
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x0003, pd + 0x1003, pd + 0x2003, pd + 0x3003
    .fill 508, 8, 0
pd:
.set page, 0
.rept 1536
    .quad page + 0x83                   // P | RW | PS
.set page, page + 0x200000
.endr
.rept 512
    .quad page + 0x9b                   // P | RW | PWT | PCD | PS
.set page, page + 0x200000
.endr

// ---------------------------------------------------------------------------------------------
// Not zeroed at start-up (nothing reads them before writing).
.section .noinit.idt, "aw", @nobits
.balign 4096
idt:   .skip 32 * 16

.section .noinit.stack, "aw", @nobits
.balign 16
stack_bottom:
       .skip 65536
stack_top:
