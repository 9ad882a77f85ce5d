import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { FEATURE_NAMES } from './features.js';
import { loadModel, type FraudModel } from './models.js';
import type { ModelArtefact } from './pipeline.js';

/**
 * Reading a model artefact for serving, evaluation or retraining: checked before any score is served from it. An
 * artefact is a JSON file anyone can edit or truncate, and one made by an older build may list other features:
 * taken as it came, weights of another length made every score NaN (approved), a null threshold declined every
 * payment, and a feature list in another order scored each input with another input's weight.
 */

const D = FEATURE_NAMES.length;
// zod 4: a number is finite (NaN and Infinity are refused; JSON has neither, and null is no number).
const finite = z.number();
const perFeature = z.array(finite).length(D);

const schema = z.looseObject({
  version: z.string().min(1),
  kind: z.enum(['logistic', 'gbt']),
  features: z.array(z.string()),
  // Decline at or above; DECLINE_NOTHING (a huge finite number) declines nothing. 0 or less would decline everything.
  threshold: finite.positive(),
  trainingScoreSample: z.array(finite.min(0).max(1)),
  trainingFeatureSample: z.array(perFeature).optional(),
  parameters: z.discriminatedUnion('kind', [
    z.object({ kind: z.literal('logistic'), means: perFeature, stds: z.array(finite.positive()).length(D), weights: perFeature, bias: finite }),
    z.object({ kind: z.literal('gbt'), booster: z.object({ name: z.string(), model: z.array(finite).min(1), options: z.record(z.string(), z.unknown()) }), means: perFeature }),
  ]),
});

/** The artefact in `text` and its model, or an error naming what is wrong (`source`: the file, for the message). */
export async function parseArtefact(text: string, source: string): Promise<{ artefact: ModelArtefact; model: FraudModel }> {
  const fail = (problem: string): never => {
    throw new Error(`model artefact ${source}: ${problem}`);
  };
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    fail(`not JSON (${(error as Error).message})`);
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) fail(parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; '));
  const artefact = parsed.data as unknown as ModelArtefact;
  if (artefact.parameters.kind !== artefact.kind) fail(`kind ${artefact.kind} but parameters of ${artefact.parameters.kind}`);
  // Vectors are positional: the model's i-th weight must meet the i-th feature this build computes.
  if (artefact.features.join(',') !== FEATURE_NAMES.join(',')) fail(`trained on features [${artefact.features.join(', ')}], this build computes [${FEATURE_NAMES.join(', ')}]`);
  const model = await loadModel(artefact.parameters).catch((error: unknown) => fail(`model does not load (${(error as Error).message})`));
  // A model that loads may still not score (a damaged booster): one score of the training means must be a probability.
  const probe = model.score([...artefact.parameters.means]);
  if (!(probe >= 0 && probe <= 1)) fail(`scores ${probe} for the training means, not a probability`);
  return { artefact, model };
}

export async function readArtefact(file: string): Promise<{ artefact: ModelArtefact; model: FraudModel }> {
  return parseArtefact(await readFile(file, 'utf8'), file);
}
