"""Write format-2 checkpoints (and an export) with main's code, for tests/data/format2/."""
import sys, torch, lightning as L
from torch.utils.data import DataLoader, TensorDataset
from tlkit.model.module import TransferModule
out = sys.argv[1]
torch.manual_seed(0)
def fit_save(module, targets, name):
    x = torch.rand(4, 3, 32, 32)
    dl = DataLoader(TensorDataset(x, targets), batch_size=4)
    t = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    t.fit(module, dl)
    t.save_checkpoint(f"{out}/{name}.ckpt", weights_only=True)
    module.eval()
    with torch.no_grad():

        inp = torch.linspace(-1, 1, 2*3*32*32).reshape(2,3,32,32)
        torch.save({"logits": module(inp)}, f"{out}/{name}.logits.pt")
m = TransferModule({"name": "test_efficientnet", "weights": "none", "input_size": 32}, ["ant", "bee", "cat"], strategy="finetune", optim={"lr": 0.1})
fit_save(m, torch.tensor([0, 1, 2, 0]), "single_label")
m = TransferModule({"name": "test_efficientnet", "weights": "none", "input_size": 32}, ["ant", "bee", "cat"], multi_label=True,
                   strategy={"kind": "linear_probe", "features": "stages", "stage_grid": 2}, optim={"lr": 0.1})
m.thresholds.copy_(torch.tensor([0.3, 0.5, 0.7]))
fit_save(m, torch.tensor([[1.,0,1],[0,1,0],[1,1,0],[0,0,1]]), "multilayer_multilabel")
from tlkit.infer.export import export_safetensors
export_safetensors(m, f"{out}/multilayer_export")
