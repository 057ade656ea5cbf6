"""Test-only transcription of declare-lab/trust-align `trust_eval/trust_eval/metrics.py` and
`evaluator.py` (commit 30ac614a): the functions tests/test_published_measures.py runs against
factuality/trusteval.py. Kept as close to the original as the injections allow: the entailment
function (`args.run_nli`, their _run_nli_autoais), the sentence splitter (`args.sent_tokenize`,
NLTK's) and `fuzz` (fuzzywuzzy's module, or an object with its partial_ratio) come from `args`;
logging and progress bars are dropped. Not used by the package."""
import copy
import re

import numpy as np
import scipy.stats as stats

from .alce_eval import normalize_answer, remove_citations


def format_document(doc):
    if "sent" in doc:
        return "Title: %s\n%s" % (doc["title"], doc["sent"])
    else:
        return "Title: %s\n%s" % (doc["title"], doc["text"])


def _is_answerable(supported_claims):
    return any(supported_claims)


def _is_refusal(item, args):
    return args.fuzz.partial_ratio(normalize_answer(args.refusal_flag), normalize_answer(item["output"])) > args.refusal_threshold


def _exact_presence(short_answers, context):
    n_short_answers = [normalize_answer(sa) for sa in short_answers]
    n_context = normalize_answer(context)
    for ans in n_short_answers:
        if ans in n_context:
            return True
    return False


def _compute_exact_match_single_query(item, args, calib=False, parametric=False):
    loc_acc = []
    if calib:
        supported_claims = np.bitwise_or.reduce([doc["answers_found"] for doc in item["docs"]]).tolist()
        if _is_answerable(supported_claims) and not _is_refusal(item, args):
            for idx, ans_list in enumerate(item["answers"]):
                if supported_claims[idx] == 1:
                    loc_acc.append(_exact_presence(ans_list, item["output"]))
        else:
            loc_acc.append(False)
    else:
        for ans_list in item["answers"]:
            loc_acc.append(_exact_presence(ans_list, item["output"]))
    if calib and parametric:
        return float(np.sum(a=loc_acc) / len(supported_claims))
    else:
        return float(np.mean(loc_acc))


def compute_exact_match(data, args, calib=False, parametric=False):
    if len(data) == 0:
        return 0
    if "answers" not in data[0] or data[0]["answers"] is None:
        return 0
    acc = []
    for item in data:
        acc.append(_compute_exact_match_single_query(item, args, calib=calib, parametric=parametric))
    return float(100 * np.mean(acc))


def get_all_em_scores(data, normalized_data, normalized_answered_data, normalized_answerable_data, args):
    result = {}
    result["regular_str_em"] = compute_exact_match(normalized_data, args)
    result["answered_str_em"] = compute_exact_match(normalized_answered_data, args)
    result["calib_answered_str_em"] = compute_exact_match(normalized_answered_data, args, calib=True)
    result["calib_answerable_str_em"] = compute_exact_match(normalized_answerable_data, args, calib=True)
    result["calib_str_em_f1"] = stats.hmean([result["calib_answered_str_em"], result["calib_answerable_str_em"]])
    result["parametric_str_em"] = compute_exact_match(normalized_answered_data, args, calib=True, parametric=True)
    result["parametric_str_em"] = result["answered_str_em"] - result["parametric_str_em"]
    return result


def compute_claim_match(data, args, calib=True, parametric=True):
    regular_scores = []
    answered_scores = []
    calib_answered_scores = []
    calib_answerable_scores = []
    parametric_answered_scores = []
    for item in data:
        normalized_output = remove_citations(item["output"])
        entail = 0
        claims = [claim_list[0] for claim_list in item["answers"]]
        calib_entail = 0
        supported_claims = np.bitwise_or.reduce([doc["answers_found"] for doc in item["docs"]]).tolist()
        for i, claim in enumerate(claims):
            ais_score = args.run_nli(normalized_output, claim)
            entail += ais_score
            if supported_claims[i] == 1:
                calib_entail += ais_score
        refusal = _is_refusal(item, args)
        answerable = _is_answerable(supported_claims)
        if not refusal:
            answered_scores.append(entail / len(claims))
        if not refusal:
            if answerable:
                calib_answered_scores.append(calib_entail / sum(supported_claims))
                parametric_answered_scores.append(calib_entail / len(supported_claims))
            else:
                calib_answered_scores.append(0)
                parametric_answered_scores.append(0)
        if answerable:
            if not refusal:
                calib_answerable_scores.append(calib_entail / sum(supported_claims))
            else:
                calib_answerable_scores.append(0)
        regular_scores.append(entail / len(claims))
    return {
        "regular_claims_nli": 100 * np.mean(regular_scores),
        "answered_claims_nli": 100 * np.mean(answered_scores if len(answered_scores) != 0 else 0),
        "calib_answered_claims_nli": 100 * np.mean(calib_answered_scores if len(calib_answered_scores) != 0 else 0),
        "calib_answerable_claims_nli": 100 * np.mean(calib_answerable_scores if len(calib_answerable_scores) != 0 else 0),
        "parametric_answered_claims_nli": 100 * np.mean(answered_scores if len(answered_scores) != 0 else 0)
        - 100 * np.mean(parametric_answered_scores if len(parametric_answered_scores) != 0 else 0),
        "calib_claims_nli_f1": stats.hmean([
            100 * np.mean(calib_answered_scores if len(calib_answered_scores) != 0 else 0),
            100 * np.mean(calib_answerable_scores if len(calib_answerable_scores) != 0 else 0)]),
    }


def compute_citation_metrics(data, args, is_qampari=False, at_most_citations=None):
    regular_ais_scores = []
    regular_ais_scores_prec = []
    answered_ais_scores = []
    answered_ais_scores_prec = []
    for item in data:
        if is_qampari:
            sents = [item["question"] + " " + x.strip() for x in item["output"].rstrip().rstrip(".").rstrip(",").split(",")]
        else:
            sents = args.sent_tokenize(item["output"])
        if len(sents) == 0:
            continue
        target_sents = [remove_citations(sent).strip() for sent in sents]
        entail = 0
        entail_prec = 0
        total_citations = 0
        for sent_id, sent in enumerate(sents):
            target_sent = target_sents[sent_id]
            joint_entail = -1
            ref = [int(r[1:]) - 1 for r in re.findall(r"\[\d+", sent)]
            if len(ref) == 0:
                joint_entail = 0
            elif any([ref_id >= len(item["docs"]) for ref_id in ref]):
                joint_entail = 0
            else:
                if at_most_citations is not None:
                    ref = ref[:at_most_citations]
                total_citations += len(ref)
                joint_passage = "\n".join([format_document(item["docs"][psgs_id]) for psgs_id in ref])
            if joint_entail == -1:
                joint_entail = args.run_nli(joint_passage, target_sent)
            entail += joint_entail
            if joint_entail and len(ref) > 1:
                for psgs_id in ref:
                    passage = format_document(item["docs"][psgs_id])
                    nli_result = args.run_nli(passage, target_sent)
                    if not nli_result:
                        subset_exclude = copy.deepcopy(ref)
                        subset_exclude.remove(psgs_id)
                        passage = "\n".join([format_document(item["docs"][pid]) for pid in subset_exclude])
                        nli_result = args.run_nli(passage, target_sent)
                        subset_coverage = np.bitwise_or.reduce([item["docs"][pid]["answers_found"] for pid in subset_exclude])
                        contained = False
                        for i in range(len(subset_coverage)):
                            if subset_coverage[i] == 1 and item["docs"][psgs_id]["answers_found"][i] == 1:
                                contained = True
                                break
                        if nli_result and (not contained):
                            pass
                        else:
                            entail_prec += 1
                    else:
                        entail_prec += 1
            else:
                entail_prec += joint_entail
        regular_ais_scores.append(entail / len(sents))
        regular_ais_scores_prec.append(entail_prec / total_citations if total_citations > 0 else 0)
        refusal = _is_refusal(item, args)
        if not refusal:
            answered_ais_scores.append(entail / len(sents))
            answered_ais_scores_prec.append(entail_prec / total_citations if total_citations > 0 else 0)
    regular_recall = 100 * np.mean(regular_ais_scores)
    regular_precision = 100 * np.mean(regular_ais_scores_prec)
    regular_f1_score = (2 * (regular_precision * regular_recall) / (regular_precision + regular_recall)
                        if (regular_precision + regular_recall) > 0 else 0)
    answered_recall = 100 * np.mean(answered_ais_scores if len(answered_ais_scores) != 0 else 0)
    answered_precision = 100 * np.mean(answered_ais_scores_prec if len(answered_ais_scores_prec) != 0 else 0)
    answered_f1_score = (2 * (answered_precision * answered_recall) / (answered_precision + answered_recall)
                         if (answered_precision + answered_recall) > 0 else 0)
    return {
        "regular_citation_rec": regular_recall, "regular_citation_prec": regular_precision,
        "regular_citation_f1": regular_f1_score, "answered_citation_rec": answered_recall,
        "answered_citation_prec": answered_precision, "answered_citation_f1": answered_f1_score,
    }


def compute_qampari_f1(data, args, cot=False, prefix="", calib=False, parametric=False):
    if len(data) == 0:
        return {prefix + "num_preds": 0, prefix + "qampari_prec": 0, prefix + "qampari_rec": 0,
                prefix + "qampari_rec_top5": 0, prefix + "qampari_f1": 0, prefix + "qampari_f1_top5": 0}
    prec = []
    rec = []
    rec_top5 = []
    f1 = []
    f1_top5 = []
    num_preds = []
    for item in data:
        o = item["output"]
        preds = [normalize_answer(x.strip()) for x in o.rstrip().rstrip(".").rstrip(",").split(",")]
        preds = [p for p in preds if len(p) > 0]
        num_preds.append(len(preds))
        if calib:
            supported_claims = np.bitwise_or.reduce([doc["answers_found"] for doc in item["docs"]]).tolist()
            if _is_answerable(supported_claims) and (not _is_refusal(item, args)):
                answers = [[normalize_answer(x) for x in ans] for i, ans in enumerate(item["answers"])
                           if supported_claims[i] == 1]
            else:
                answers = [[""]]
        else:
            answers = [[normalize_answer(x) for x in ans] for ans in item["answers"]]
        flat_answers = [item for sublist in answers for item in sublist]
        if calib and parametric:
            prec.append(sum([p in flat_answers for p in preds]) / len(preds) if len(preds) > 0 else 0)
            rec.append(sum([any([x in preds for x in a]) for a in answers]) / len(supported_claims))
            rec_top5.append(min(5, sum([any([x in preds for x in a]) for a in answers])) / min(5, len(supported_claims)))
        else:
            prec.append(sum([p in flat_answers for p in preds]) / len(preds) if len(preds) > 0 else 0)
            rec.append(sum([any([x in preds for x in a]) for a in answers]) / len(answers))
            rec_top5.append(min(5, sum([any([x in preds for x in a]) for a in answers])) / min(5, len(answers)))
        if (prec[-1] + rec[-1]) == 0:
            f1.append(0)
        else:
            f1.append(2 * prec[-1] * rec[-1] / (prec[-1] + rec[-1]))
        if (prec[-1] + rec_top5[-1]) == 0:
            f1_top5.append(0)
        else:
            f1_top5.append(2 * prec[-1] * rec_top5[-1] / (prec[-1] + rec_top5[-1]))
    return {
        prefix + "num_preds": np.mean(num_preds),
        prefix + "qampari_prec": 100 * np.mean(prec),
        prefix + "qampari_rec": 100 * np.mean(rec),
        prefix + "qampari_rec_top5": 100 * np.mean(rec_top5),
        prefix + "qampari_f1": 100 * np.mean(f1),
        prefix + "qampari_f1_top5": 100 * np.mean(f1_top5),
    }


def _compute_incorrect_frequency(answered_data):
    if len(answered_data) == 0:
        return {"qampari_presence": 0.0, "qampari_absence": 0.0}
    presence_list = []
    absence_list = []
    for item in answered_data:
        supported_claims = np.bitwise_or.reduce([doc["answers_found"] for doc in item["docs"]]).tolist()
        calib_ground_truths = []
        for i, ans in enumerate(item["answers"]):
            if supported_claims[i] == 1:
                calib_ground_truths.append(ans)
        o = item["output"]
        preds = [x.strip() for x in o.rstrip().rstrip(".").rstrip(",").split(",")]
        preds = [p for p in preds if len(p) > 0]
        ans_correctness_ls = [any([_exact_presence(gts, p) for gts in calib_ground_truths]) for p in preds]
        ans_existence_ls = [any([_exact_presence([p], doc["text"]) for doc in item["docs"]]) for p in preds]
        ans_correctness = np.array(ans_correctness_ls)
        ans_existence = np.array(ans_existence_ls)
        if any(ans_correctness == 0):
            presence_list.append(np.sum((ans_correctness == 0) & (ans_existence == 1)) / sum(ans_correctness == 0))
            absence_list.append(np.sum((ans_correctness == 0) & (ans_existence == 0)) / sum(ans_correctness == 0))
    return {"qampari_presence": 100 * np.mean(presence_list), "qampari_absence": 100 * np.mean(absence_list)}


def get_all_em5_scores(data, normalized_data, normalized_answered_data, normalized_answerable_data, args):
    result = {}
    result.update(_compute_incorrect_frequency(normalized_answered_data))
    result.update(compute_qampari_f1(normalized_data, args, prefix="regular_"))
    result.update(compute_qampari_f1(normalized_answered_data, args, prefix="answered_"))
    result.update(compute_qampari_f1(normalized_answered_data, args, prefix="calib_answered_", calib=True))
    result.update(compute_qampari_f1(normalized_answerable_data, args, prefix="calib_answerable_", calib=True))
    result["calib_qampari_em_f1"] = stats.hmean([result["calib_answered_qampari_f1_top5"],
                                                 result["calib_answerable_qampari_f1_top5"]])
    result["parametric_qampari_rec_top5"] = (
        result["answered_qampari_rec_top5"]
        - compute_qampari_f1(normalized_answered_data, args, prefix="parametric_", calib=True,
                             parametric=True)["parametric_qampari_rec_top5"])
    return result


def compute_macro_metrics(data, args):
    refuse_rec_num = refuse_rec = refuse_prec_num = refuse_prec = 0
    ans_rec_num = ans_rec = ans_prec_num = ans_prec = 0
    for item in data:
        supported_claims = np.bitwise_or.reduce([doc["answers_found"] for doc in item["docs"]]).tolist()
        answerable = _is_answerable(supported_claims)
        refusal = _is_refusal(item, args)
        if not answerable:
            refuse_rec_num += 1
            if refusal:
                refuse_rec += 1
        if refusal:
            refuse_prec_num += 1
            if not answerable:
                refuse_prec += 1
        if answerable:
            ans_rec_num += 1
            if not refusal:
                ans_rec += 1
        if not refusal:
            ans_prec_num += 1
            if answerable:
                ans_prec += 1
    refuse_recall = 100 * refuse_rec / refuse_rec_num if refuse_rec_num > 0 else 0
    refuse_precision = 100 * refuse_prec / refuse_prec_num if refuse_prec_num > 0 else 0
    refuse_f1_score = (2 * (refuse_precision * refuse_recall) / (refuse_precision + refuse_recall)
                       if (refuse_precision + refuse_recall) > 0 else 0)
    ans_recall = 100 * ans_rec / ans_rec_num if ans_rec_num > 0 else 0
    ans_precision = 100 * ans_prec / ans_prec_num if ans_prec_num > 0 else 0
    ans_f1_score = (2 * (ans_precision * ans_recall) / (ans_precision + ans_recall)
                    if (ans_precision + ans_recall) > 0 else 0)
    return {
        "refuse_rec": refuse_recall, "refuse_prec": refuse_precision, "refuse_f1": refuse_f1_score,
        "answerable_rec": ans_recall, "answerable_prec": ans_precision, "answerable_f1": ans_f1_score,
        "macro_avg": np.mean([refuse_recall, ans_recall]), "macro_f1": np.mean([refuse_f1_score, ans_f1_score]),
    }


def evaluate(eval_data, args, eval_type="em"):
    """Evaluator.__init__ (_process_data) and compute_metrics(correctness=True, citations=True)."""
    def _normalize_data(data):
        normalized_data = copy.deepcopy(data)
        for item in normalized_data:
            item["output"] = remove_citations(item["output"])
        return normalized_data

    answered_data = [copy.deepcopy(item) for item in eval_data if not _is_refusal(item, args)]
    answerable_data = [copy.deepcopy(item) for item in eval_data
                       if _is_answerable(np.bitwise_or.reduce([doc["answers_found"] for doc in item["docs"]]))]
    normalized_data = _normalize_data(eval_data)
    normalized_answered_data = _normalize_data(answered_data)
    normalized_answerable_data = _normalize_data(answerable_data)
    result = {"num_samples": len(eval_data)}
    result.update(compute_macro_metrics(eval_data, args))
    if eval_type == "em":
        result.update(get_all_em_scores(eval_data, normalized_data, normalized_answered_data,
                                        normalized_answerable_data, args))
    elif eval_type == "em5":
        result.update(get_all_em5_scores(eval_data, normalized_data, normalized_answered_data,
                                         normalized_answerable_data, args))
    else:
        result.update(compute_claim_match(normalized_data, args))
    result.update(compute_citation_metrics(eval_data, args, is_qampari=eval_type == "em5",
                                           at_most_citations=args.at_most_citations))
    if eval_type == "em":
        result["trust_score"] = np.mean([result["calib_str_em_f1"], result["macro_f1"], result["answered_citation_f1"]])
    elif eval_type == "em5":
        result["trust_score"] = np.mean([result["calib_qampari_em_f1"], result["macro_f1"], result["answered_citation_f1"]])
    else:
        result["trust_score"] = np.mean([result["calib_claims_nli_f1"], result["macro_f1"], result["answered_citation_f1"]])
    return result
