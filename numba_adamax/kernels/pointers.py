"""The two low-level operations the group kernels need, written as numba intrinsics.

``pointer_to(address, like)`` turns an integer address into a typed pointer to
elements of ``like``'s dtype; ``read_address(address)`` loads the pointer-sized
integer stored at ``address``. See ``addresses`` for where the addresses come from.
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic


def pointer_intrinsic(intrinsic, types):
    """``pointer_to`` built with a target's ``intrinsic`` decorator and ``types``
    module (the CPU's here; ``cuda_pointers`` builds the device one)."""

    @intrinsic
    def pointer_to(typingctx, address, like):
        """A ``CPointer`` of ``like``'s element type at integer ``address``."""
        if not isinstance(address, types.Integer):
            return None
        signature = types.CPointer(like.dtype)(address, like)

        def codegen(context, builder, sig, args):
            return builder.inttoptr(args[0], context.get_value_type(sig.return_type))

        return signature, codegen

    return pointer_to


pointer_to = pointer_intrinsic(intrinsic, types)


@intrinsic
def read_address(typingctx, address):
    """The int64 stored at integer ``address``."""
    if not isinstance(address, types.Integer):
        return None
    signature = types.int64(address)

    def codegen(context, builder, sig, args):
        return builder.load(builder.inttoptr(args[0], ir.IntType(64).as_pointer()))

    return signature, codegen
