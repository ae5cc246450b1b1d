/*
 * kvmhold: holds one KVM VM open inside the testbed's L1 for as long as L1
 * runs scenarios (l1-init.sh starts it; build-l1.sh compiles it).
 *
 * Why: with no VM left, L1's KVM flips static keys when the next VM is made
 * or the last one goes (preempt_notifier_key on every VM create/destroy,
 * the LAPIC keys on every vCPU), and each flip live-patches L1's kernel text
 * (int3 + IPIs). Under QEMU/TCG's emulation that patching now and then
 * wedges L1: one CPU loops in the int3 handler holding its runqueue lock,
 * the other spins on that lock with interrupts off, and the console goes
 * silent (seen after ~400 quick VM create/destroy cycles; in the suite
 * error-cases and guest resets create and destroy VMs). A VM with an
 * in-kernel irqchip and one vCPU that never runs keeps every count above
 * zero, so nubo-vmm's VMs come and go without any patching.
 */
#include <fcntl.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/kvm.h>

int main(void)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) {
        perror("kvmhold: open /dev/kvm");
        return 1;
    }
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) {
        perror("kvmhold: KVM_CREATE_VM");
        return 1;
    }
    if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) {
        perror("kvmhold: KVM_CREATE_IRQCHIP");
        return 1;
    }
    if (ioctl(vm, KVM_CREATE_VCPU, 0) < 0) {
        perror("kvmhold: KVM_CREATE_VCPU");
        return 1;
    }
    printf("TESTBED-KVMHOLD holding a VM (irqchip, 1 vCPU) pid=%d\n", (int)getpid());
    fflush(stdout);
    for (;;)
        pause();
}
