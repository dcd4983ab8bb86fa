# petrel test guest: application-processor start-up (AT&T syntax; see smp.rs).
#
# trampoline_start..trampoline_end is copied by the BSP to TRAMPOLINE_BASE (below 1 MiB) and
# runs there after INIT-SIPI-SIPI with vector TRAMPOLINE_BASE >> 12: CS = vector << 8, IP = 0,
# real mode. It loads ap_gdt (in the image), enters 32-bit protected mode, enables PAE with the
# guest's own page tables (pml4 in start.s, identity map of 0..4 GiB), sets EFER.LME, enables
# paging and jumps to ap_entry64 in 64-bit mode, which takes a stack and calls Rust.
# Only the trampoline runs from the copy; it refers to itself through TRAMPOLINE_BASE.

.set TRAMPOLINE_BASE, 0x10000

.section .rodata.trampoline, "a"
.balign 16
.global trampoline_start, trampoline_end
trampoline_start:
.code16
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    # 0x66 prefix: load a 32-bit GDT base (without it, 16-bit lgdt loads 24 bits).
    lgdtl tr_gdtr - trampoline_start
    movl $0x00000011, %eax                  # CR0 = PE | ET (also clears CD and NW)
    movl %eax, %cr0
    ljmpl $0x18, $(TRAMPOLINE_BASE + tr_pm32 - trampoline_start)

.code32
tr_pm32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl $0x620, %eax                       # CR4 = PAE | OSFXSR | OSXMMEXCPT
    movl %eax, %cr4
    movl $pml4, %eax                        # the guest's page tables (below 4 GiB)
    movl %eax, %cr3
    movl $0xC0000080, %ecx                  # IA32_EFER
    rdmsr
    orl $0x100, %eax                        # LME
    wrmsr
    movl $0x80000033, %eax                  # CR0 = PG | NE | ET | MP | PE
    movl %eax, %cr0
    ljmpl $0x08, $(TRAMPOLINE_BASE + tr_lm64 - trampoline_start)

.code64
tr_lm64:
    movl $ap_entry64, %eax                  # the image is below 4 GiB
    jmp *%rax

.balign 8
tr_gdtr:
    .word ap_gdt_end - ap_gdt - 1
    .long ap_gdt
trampoline_end:

# The APs' GDT: 0x08 64-bit code (the IDT gates use it), 0x10 flat data, 0x18 32-bit code.
# Accessed bits preset so the CPU never writes here.
.balign 16
ap_gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
    .quad 0x00cf9b000000ffff
ap_gdt_end:

# ---------------------------------------------------------------------------------------------
# 64-bit AP entry, run in place. Claims stack number ap_next++ (lock xadd); an AP beyond
# ap_stack_count halts without a stack.
.section .text.ap_entry, "ax"
.global ap_entry64
.type ap_entry64, @function
ap_entry64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    lidt idtr(%rip)
    movl $1, %eax
    lock xaddl %eax, ap_next(%rip)
    cmpl ap_stack_count(%rip), %eax
    jae 1f
    incl %eax                               # stack i occupies (i, i + 1] * AP_STACK_SIZE
    shlq $14, %rax                          # AP_STACK_SIZE = 16 KiB
    addq ap_stack_base(%rip), %rax
    movq %rax, %rsp
    xorl %ebp, %ebp
    call petrel_guest_ap_main               # never returns
1:  cli
    hlt
    jmp 1b
.size ap_entry64, . - ap_entry64

# Set by the BSP before the first SIPI (smp.rs).
.section .data.ap_boot, "aw"
.balign 16
.global ap_next, ap_stack_count, ap_stack_base
ap_stack_base:  .quad 0
ap_next:        .long 0
ap_stack_count: .long 0
