/* kvm-floor: the least a VMM can do to run petrel's benchmark guest. It is the floor that
 * bench/run.sh compares petrel with, measured in the same run on the same machine.
 *
 * It sets up a VM the way petrel does: 128 MiB of anonymous, MAP_NORESERVE guest RAM in one
 * memory slot, the TSS and identity-map addresses, the in-kernel irqchip and PIT (speaker
 * dummy), and PIT tick reinjection turned off on a background thread (as petrel does, so the
 * SRCU wait this costs overlaps the run; pass "reinject" as the second argument to leave it
 * on). One vCPU starts directly in 64-bit mode (no CPUID, MSR, FPU or LAPIC set-up, no
 * kernel loading) and runs a guest that writes N bytes to COM1 (port 0x3f8) with the same
 * instruction petrel's test guest uses in its serial-flood scenario, `rep outsb` of up to 576
 * bytes of the same pattern, then resets through the i8042 (0xfe to port 0x64). The run loop
 * copies the bytes to stdout (stdio-buffered) and exits 0 at the reset.
 *
 * Build: gcc -O2 -pthread -o kvm-floor kvm-floor.c
 * Use:   ./kvm-floor N [reinject] > out      (N bytes, 0 <= N <= 10000000)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define RAM_SIZE (128ULL << 20)
#define CODE_GPA 0x1000ULL
#define PML4_GPA 0x2000ULL
#define PDPT_GPA 0x3000ULL
#define PD_GPA 0x4000ULL
#define PATTERN_GPA 0x5000ULL
#define STACK_TOP 0x8000ULL
#define TSS_GPA 0xfffbd000ULL
#define IDENTITY_MAP_GPA 0xfffbc000ULL
#define COM1 0x3f8
#define I8042_COMMAND 0x64
#define FLOOD_PERIOD 576 /* the test guest's chunk: lcm(36, 64) bytes */

/* The guest, assembled by gcc as 64-bit code and copied to CODE_GPA. rbx = bytes to write. */
extern const unsigned char guest_start[], guest_end[];
__asm__(
    ".pushsection .rodata\n"
    ".globl guest_start\n"
    ".globl guest_end\n"
    "guest_start:\n"
    "1:  test %rbx, %rbx\n"
    "    jz 3f\n"
    "    mov $576, %ecx\n"
    "    cmp %rcx, %rbx\n"
    "    jae 2f\n"
    "    mov %rbx, %rcx\n"
    "2:  sub %rcx, %rbx\n"
    "    mov $0x5000, %esi\n" /* PATTERN_GPA */
    "    mov $0x3f8, %dx\n"
    "    rep outsb\n"
    "    jmp 1b\n"
    "3:  mov $0xfe, %al\n"
    "    out %al, $0x64\n"
    "4:  hlt\n"
    "    jmp 4b\n"
    "guest_end:\n"
    ".popsection\n");

static void die(const char *what) {
    fprintf(stderr, "kvm-floor: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int xioctl(int fd, unsigned long request, void *arg, const char *what) {
    int ret = ioctl(fd, request, arg);
    if (ret < 0)
        die(what);
    return ret;
}

static void *discard_lost_pit_ticks(void *arg) {
    int vm = *(int *)arg;
    struct kvm_reinject_control control = {.pit_reinject = 0};
    if (ioctl(vm, KVM_REINJECT_CONTROL, &control) < 0)
        fprintf(stderr, "kvm-floor: KVM_REINJECT_CONTROL: %s\n", strerror(errno));
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3 || (argc == 3 && strcmp(argv[2], "reinject") != 0)) {
        fprintf(stderr, "usage: %s N [reinject]\n", argv[0]);
        return 2;
    }
    char *end;
    errno = 0;
    unsigned long long count = strtoull(argv[1], &end, 10);
    if (errno || *end || argv[1][0] == '-' || count > 10000000ULL) {
        fprintf(stderr, "kvm-floor: bad N '%s' (want 0..=10000000)\n", argv[1]);
        return 2;
    }
    int keep_reinjection = argc == 3;

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("open /dev/kvm");
    int vm = xioctl(kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM");
    xioctl(vm, KVM_SET_TSS_ADDR, (void *)(uintptr_t)TSS_GPA, "KVM_SET_TSS_ADDR");
    uint64_t identity = IDENTITY_MAP_GPA;
    xioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &identity, "KVM_SET_IDENTITY_MAP_ADDR");
    xioctl(vm, KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP");
    struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
    xioctl(vm, KVM_CREATE_PIT2, &pit, "KVM_CREATE_PIT2");
    pthread_t tuning;
    int tuning_started = 0;
    if (!keep_reinjection)
        tuning_started = pthread_create(&tuning, NULL, discard_lost_pit_ticks, &vm) == 0;

    /* Guest RAM as vm-memory maps it for petrel: private, anonymous, not reserved. */
    unsigned char *ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (ram == MAP_FAILED)
        die("mmap guest RAM");
    struct kvm_userspace_memory_region region = {
        .slot = 0,
        .guest_phys_addr = 0,
        .memory_size = RAM_SIZE,
        .userspace_addr = (uintptr_t)ram,
    };
    xioctl(vm, KVM_SET_USER_MEMORY_REGION, &region, "KVM_SET_USER_MEMORY_REGION");

    memcpy(ram + CODE_GPA, guest_start, (size_t)(guest_end - guest_start));
    static const char alphabet[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    for (int i = 0; i < FLOOD_PERIOD; i++)
        ram[PATTERN_GPA + i] = i % 64 == 63 ? '\n' : alphabet[i % 36];
    /* Identity map of the first 1 GiB with 2 MiB pages. */
    uint64_t *pml4 = (uint64_t *)(ram + PML4_GPA);
    uint64_t *pdpt = (uint64_t *)(ram + PDPT_GPA);
    uint64_t *pd = (uint64_t *)(ram + PD_GPA);
    pml4[0] = PDPT_GPA | 3;
    pdpt[0] = PD_GPA | 3;
    for (uint64_t i = 0; i < 512; i++)
        pd[i] = (i << 21) | 0x83;

    int vcpu = xioctl(vm, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU");
    int run_size = xioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE");
    struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap kvm_run");

    struct kvm_sregs sregs;
    xioctl(vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
    sregs.cr3 = PML4_GPA;
    sregs.cr4 = (1 << 5);                                /* PAE */
    sregs.cr0 = 0x80000001 | (1 << 4) | (1 << 5);        /* PG, PE, ET, NE */
    sregs.efer = (1 << 8) | (1 << 10);                   /* LME, LMA */
    struct kvm_segment code = {.base = 0, .limit = 0xffffffff, .selector = 8, .present = 1,
                               .type = 11, .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1};
    struct kvm_segment data = code;
    data.type = 3;
    data.selector = 16;
    data.l = 0;
    data.db = 1;
    sregs.cs = code;
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
    xioctl(vcpu, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");
    struct kvm_regs regs = {.rip = CODE_GPA, .rflags = 2, .rsp = STACK_TOP, .rbx = count};
    xioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");

    unsigned long long written = 0;
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            die("KVM_RUN");
        }
        if (run->exit_reason == KVM_EXIT_INTR)
            continue;
        if (run->exit_reason != KVM_EXIT_IO) {
            fprintf(stderr, "kvm-floor: unexpected exit reason %u\n", run->exit_reason);
            return 1;
        }
        unsigned char *bytes = (unsigned char *)run + run->io.data_offset;
        size_t len = (size_t)run->io.size * run->io.count;
        if (run->io.direction == KVM_EXIT_IO_IN) {
            memset(bytes, 0xff, len);
        } else if (run->io.port == COM1) {
            fwrite(bytes, 1, len, stdout);
            written += len;
        } else if (run->io.port == I8042_COMMAND && len == 1 && bytes[0] == 0xfe) {
            break;
        }
    }
    if (fflush(stdout) != 0)
        die("write stdout");
    if (written != count) {
        fprintf(stderr, "kvm-floor: guest wrote %llu bytes, expected %llu\n", written, count);
        return 1;
    }
    if (tuning_started)
        pthread_join(tuning, NULL);
    /* Like petrel, let the process exit tear the VM down (fds closed at exit). */
    return 0;
}
